"""Running one attempt of a task: sync on a thread or inline, async on the engine's loop."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from . import attempt_logs, tracing
from .attempt_logs import AttemptLog
from .context import Context
from .exceptions import TaskInterrupted, TaskReturnError, TaskTimeoutError
from .logs import fields
from .workflow import Task

if TYPE_CHECKING:
    import asyncio

# asyncio is imported where async tasks are run, not at the top: an engine that only reads
# executions (durably list, show) never starts a loop, and the import costs tens of ms.

_R = TypeVar("_R")
_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class TaskHandle:
    """What a task taking ``(ctx, handle)`` gets: its attempt number, a heartbeat, a
    ``logger`` whose records are stored with the attempt, and for an instance of a mapped task
    its ``item`` and ``index`` (None otherwise)."""

    __slots__ = (
        "_beat", "_capture", "_log", "_open_log", "_trace", "attempt", "child", "execution_id",
        "index", "item", "task_name",
    )  # fmt: skip

    def __init__(
        self,
        execution_id: Any,
        task_name: str,
        attempt: int,
        beat: Callable[[], None],
        *,
        item: Any = None,
        index: int | None = None,
        child: dict[str, Any] | None = None,
        log: Callable[[], AttemptLog] | None = None,
        capture: bool = False,
        trace: tuple[str, str | None] | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.task_name = task_name
        self.attempt = attempt
        self._beat = beat
        self.item = item
        self.index = index
        # A sub-workflow task's child outcome (execution_id, status, context, error).
        self.child = child
        self._open_log = log  # made on first use: a task that never logs costs nothing
        self._log: AttemptLog | None = None
        self._capture = capture
        self._trace = trace  # tracing on: (workflow, the execution's trace context)

    def heartbeat(self) -> None:
        """Tell the engine this attempt is alive (the engine also beats on its own)."""
        self._beat()

    @property
    def logger(self) -> logging.Logger:
        """A ``logging.Logger`` (``durably.task.<name>``) whose records are stored with this
        attempt (``durably show``, ``TaskResult.history``) and passed on to the application's
        logging configuration."""
        return self._attempt_log().logger

    def _attempt_log(self) -> AttemptLog:
        if self._log is None:
            if self._open_log is not None:
                self._log = self._open_log()
            else:  # a handle made by hand (tests): its records are kept nowhere
                self._log = AttemptLog(
                    fields("task_log", str(self.execution_id), None, self.task_name, self.attempt)
                )
        return self._log


def output_of(task: Task, ctx: Context, returned: Any) -> dict[str, Any]:
    """The task's output context: its return value if a Context or dict, else ``ctx``. An
    instance of a task with ``collect=key`` returns any value: its output is ``{key: value}``."""
    if task.collect is not None:
        return {task.collect: returned}
    if returned is None:
        return ctx._data
    if isinstance(returned, Context):
        return returned._data
    if isinstance(returned, dict):
        return returned
    raise TaskReturnError(
        f"task {task.name!r} returned {type(returned).__name__}: a task returns None, "
        "a Context or a dict"
    )


def _args(task: Task, ctx: Context, handle: TaskHandle) -> tuple[Any, ...]:
    return (ctx, handle) if task.wants_handle else (ctx,)


def run_inline(task: Task, ctx: Context, handle: TaskHandle) -> dict[str, Any]:
    """Run a sync task without a timeout on the calling thread."""
    if handle._capture or handle._trace is not None:
        with observed(handle):
            return output_of(task, ctx, task.fn(*_args(task, ctx, handle)))
    return output_of(task, ctx, task.fn(*_args(task, ctx, handle)))


@contextlib.contextmanager
def observed(handle: TaskHandle) -> Iterator[None]:
    """While the attempt runs: its span is current (tracing on), and the records of this
    thread or asyncio task go to its log (``capture_logs``)."""
    with contextlib.ExitStack() as stack:
        found = tracing.tracer() if handle._trace is not None else None
        if found is not None and handle._trace is not None:
            workflow, parent = handle._trace
            attrs = tracing.attributes(
                handle.execution_id, workflow, handle.task_name, handle.attempt
            )
            stack.enter_context(
                tracing.span(found, f"durably.task {handle.task_name}", attrs, parent=parent)
            )
        if handle._capture:
            token = attempt_logs.current.set(handle._attempt_log())
            stack.callback(attempt_logs.current.reset, token)
        yield


class DaemonPool:
    """Threads for sync tasks that never keep the process alive.

    ThreadPoolExecutor joins its threads when the interpreter exits, so one task stuck in a
    sync call would hang the exit; a task lost that way is resumed like any crash.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._work: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._work = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., _R], *args: Any) -> Future[_R]:
        future: Future[_R] = Future()
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._serve, name="durably-task", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1  # reserved: an idle thread takes this job
        self._work.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while (job := self._work.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the waiting scheduler
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Idle threads exit; a thread still in a task ends with it (or with the process)."""
        for _ in self._threads:
            self._work.put(None)


class Executor:
    """A thread pool for sync tasks and one event loop thread for async tasks."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._pool: DaemonPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def can_inline(self, task: Task) -> bool:
        return not task.is_async and task.timeout is None

    def submit(
        self, task: Task, ctx: Context, handle: TaskHandle
    ) -> concurrent.futures.Future[dict[str, Any]]:
        if task.is_async:
            import asyncio

            return asyncio.run_coroutine_threadsafe(self._run_async(task, ctx, handle), self.loop)
        future = self.pool.submit(run_inline, task, ctx, handle)
        if task.timeout is None:
            return future
        return self._with_timeout(future, task)

    async def _run_async(self, task: Task, ctx: Context, handle: TaskHandle) -> dict[str, Any]:
        # This coroutine runs as its own asyncio task: what observed() sets is its own.
        with observed(handle) if handle._capture or handle._trace else contextlib.nullcontext():
            return await self._await(task, ctx, handle)

    async def _await(self, task: Task, ctx: Context, handle: TaskHandle) -> dict[str, Any]:
        import asyncio

        coro: Coroutine[Any, Any, Any] = task.fn(*_args(task, ctx, handle))
        try:
            returned = await asyncio.wait_for(coro, task.timeout)
        except TimeoutError as exc:
            raise TaskTimeoutError(
                f"task {task.name!r} attempt {handle.attempt} timed out after {task.timeout}s"
            ) from exc
        except (SystemExit, KeyboardInterrupt) as exc:
            # Let out, either would stop the event loop's thread and wedge every async task.
            raise TaskInterrupted(f"the task raised {type(exc).__name__}: {exc}") from exc
        return output_of(task, ctx, returned)

    def _with_timeout(
        self, inner: concurrent.futures.Future[dict[str, Any]], task: Task
    ) -> concurrent.futures.Future[dict[str, Any]]:
        # A thread cannot be interrupted: the attempt fails at its deadline and whatever the
        # thread returns later is dropped.
        outer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def expire() -> None:
            if not outer.done():
                outer.set_exception(
                    TaskTimeoutError(f"task {task.name!r} timed out after {task.timeout}s")
                )

        def finish(done: concurrent.futures.Future[dict[str, Any]]) -> None:
            timer.cancel()
            if outer.done():
                return
            exc = done.exception()
            if exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        timer = threading.Timer(task.timeout or 0, expire)
        timer.daemon = True
        timer.start()
        inner.add_done_callback(finish)
        return outer

    @property
    def pool(self) -> DaemonPool:
        with self._lock:
            if self._pool is None:
                self._pool = DaemonPool(self.concurrency)
            return self._pool

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="durably-async", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is threading.current_thread():
            return
        # Close the loop once it stopped (an unclosed loop leaks its self-pipe sockets); a
        # coroutine blocking the loop thread keeps it open rather than hanging close().
        thread.join(timeout=2.0)
        if not thread.is_alive():
            loop.close()
