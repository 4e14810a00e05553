"""The Engine: the public entry point that runs, queues, inspects and repairs executions."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from . import codec
from .context import Context
from .exceptions import (
    ExecutionNotFound,
    ExecutionStateError,
    WorkflowDefinitionError,
    WorkflowNotRegistered,
)
from .executor import Executor
from .results import (
    ABANDONED,
    COMPLETED,
    EXECUTION_TERMINAL,
    FAILED,
    NOT_STARTED,
    READY,
    RUNNING,
    SKIPPED,
    ExecutionResult,
    TaskResult,
)
from .scheduler import Run, TaskState, load_run
from .store import Row, Store, Tx, open_store, parse_timestamp, timestamp
from .workflow import Workflow, registered

if TYPE_CHECKING:
    from .worker import Worker

DEFAULT_MAX_CONTEXT_BYTES = 1024 * 1024
HOST = socket.gethostname()


def new_worker_id() -> str:
    """``host:pid:random``: enough to tell a dead local process from a live remote one."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(worker_id: str) -> bool:
    """True only when the claim's process is on this host and no longer exists."""
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _as_id(execution_id: UUID | str) -> str:
    try:
        return str(UUID(str(execution_id)))
    except ValueError:
        raise ExecutionNotFound(f"{execution_id!r} is not an execution id") from None


class Engine:
    """Runs workflows against one database (SQLite by default, or PostgreSQL)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        lease: float = 30.0,
        concurrency: int | None = None,
        max_recovery_attempts: int = 3,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
        synchronous: str | None = None,
        schema: str | None = None,
        store: Store | None = None,
    ) -> None:
        if isinstance(lease, bool) or not isinstance(lease, int | float) or lease <= 0:
            raise ValueError("lease must be a number of seconds > 0")
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError("concurrency must be an int >= 1")
        self.store = store or open_store(url, synchronous=synchronous, schema=schema)
        self.lease = float(lease)
        self.max_recovery_attempts = max_recovery_attempts
        self.max_context_bytes = max_context_bytes
        self.worker_id = new_worker_id()
        self.executor = Executor(concurrency or min(32, (os.cpu_count() or 1) + 4))
        self._workflows: dict[tuple[str, str], Workflow] = {}
        self._templates: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        for wf in workflows:
            self.register(wf)

    # -- definitions ---------------------------------------------------------------------------

    def register(self, wf: Workflow) -> Workflow:
        """Make ``wf`` resumable by this engine (``run`` and ``start`` register too)."""
        if not isinstance(wf, Workflow):
            raise WorkflowDefinitionError(f"expected a Workflow, got {type(wf).__name__}")
        wf.validate()
        key = (wf.name, wf.version)
        with self._lock:
            if self._workflows.get(key) is not wf:
                self._workflows[key] = wf
                self._templates.pop(key, None)
        return wf

    def _workflow(self, name: str, version: str) -> Workflow:
        wf = self._workflows.get((name, version))
        if wf is None:
            candidate = registered(name)
            if candidate is not None and candidate.version == version:
                wf = self.register(candidate)
        if wf is None:
            raise WorkflowNotRegistered(
                f"workflow {name!r} version {version} is not registered in this process: "
                "import the module that defines it (or pass it to Engine(workflows=...)); "
                "a changed definition has a new version and cannot resume old executions"
            )
        return wf

    def _template(self, wf: Workflow) -> list[dict[str, Any]]:
        key = (wf.name, wf.version)
        rows = self._templates.get(key)
        if rows is None:
            rows = [
                {
                    "name": task.name,
                    "position": task.position,
                    "max_attempts": task.retry.max_attempts,
                    "trigger_rules": json.dumps(task.trigger.to_json()),
                    "configuration": json.dumps(
                        {
                            "dependencies": list(task.dependencies),
                            "retry": task.retry.to_json(),
                            "timeout": task.timeout,
                            "merge": task.merge if isinstance(task.merge, str) else "callable",
                            "compensate": task.compensate is not None,
                        }
                    ),
                }
                for task in wf.tasks.values()
            ]
            self._templates[key] = rows
        return rows

    # -- starting ------------------------------------------------------------------------------

    def _create(
        self,
        tx: Tx,
        wf: Workflow,
        initial: str | None,
        *,
        claimed: bool,
        context_id: str | None = None,
        parent_id: str | None = None,
        copied: Mapping[str, Row] | None = None,
        configuration: Mapping[str, str] | None = None,
    ) -> tuple[str, list[TaskState]]:
        """Insert an execution and its tasks; return its id and the tasks' states."""
        now = timestamp()
        execution_id = str(uuid.uuid4())
        if context_id is None:
            context_id = str(uuid.uuid4())
            tx.execute("insert_context", {"id": context_id, "value": initial, "now": now})
        tx.execute(
            "insert_execution",
            {
                "id": execution_id,
                "name": wf.name,
                "version": wf.version,
                "status": RUNNING,
                "context_id": context_id,
                "claimed_by": self.worker_id if claimed else None,
                "parent_id": parent_id,
                "now": now,
            },
        )
        rows = []
        copied = copied or {}
        for template in self._template(wf):
            name = template["name"]
            old = copied.get(name)
            rows.append(
                {
                    **template,
                    "id": str(uuid.uuid4()),
                    "execution_id": execution_id,
                    "status": COMPLETED
                    if old
                    else (READY if not wf.tasks[name].dependencies else NOT_STARTED),
                    "attempt": old["attempt"] if old else 0,
                    "claimed_by": None,
                    "heartbeat_at": None,
                    "started_at": old["started_at"] if old else None,
                    "completed_at": old["completed_at"] if old else None,
                    "configuration": (configuration or {}).get(name, template["configuration"]),
                    "now": now,
                }
            )
        tx.execute_many("insert_task", rows)
        states = [
            TaskState(r["id"], r["name"], r["status"], r["attempt"], None, None, None, None)
            for r in rows
        ]
        return execution_id, states

    def run(
        self, wf: Workflow, context: Context | Mapping[str, Any] | None = None
    ) -> ExecutionResult:
        """Run ``wf`` in this process until it is terminal (compensations included)."""
        self.register(wf)
        initial = _encode_initial(context, self.max_context_bytes)
        with self.store.transaction() as tx:
            execution_id, states = self._create(tx, wf, initial, claimed=True)
            run = Run(self, wf, execution_id, initial, states, {})
            first = run.start_ready(tx)
        return self._drive(run, first)

    def start(self, wf: Workflow, context: Context | Mapping[str, Any] | None = None) -> UUID:
        """Queue an execution for workers (``durably worker``); return its id."""
        self.register(wf)
        with self.store.transaction() as tx:
            execution_id, _ = self._create(
                tx, wf, _encode_initial(context, self.max_context_bytes), claimed=False
            )
            tx.execute("notify_work", {})
        return UUID(execution_id)

    async def run_async(
        self, wf: Workflow, context: Context | Mapping[str, Any] | None = None
    ) -> ExecutionResult:
        """``run`` without blocking the event loop (the engine's threads do the work)."""
        return await asyncio.to_thread(self.run, wf, context)

    def _drive(self, run: Run, first: list[str]) -> ExecutionResult:
        self._ensure_heartbeat()
        with self._lock:
            self._runs[run.id] = run
        try:
            run.drive(first)
        finally:
            with self._lock:
                self._runs.pop(run.id, None)
            if not run.finished:
                with self.store.transaction() as tx:
                    tx.execute(
                        "release_execution",
                        {"id": run.id, "worker": self.worker_id, "now": timestamp()},
                    )
        return self.get(run.id)

    # -- recovery ------------------------------------------------------------------------------

    def resume(self, execution_id: UUID | str) -> ExecutionResult:
        """Continue an unfinished execution here, taking over claims whose process is gone or
        whose lease expired; a finished execution just returns its result."""
        key = _as_id(execution_id)
        with self._lock:
            if key in self._runs:
                raise ExecutionStateError(f"execution {key} is already running in this engine")
        with self.store.transaction() as tx:
            row = self._execution_row(tx, key)
            if row["status"] in EXECUTION_TERMINAL:
                run = None
            else:
                wf = self._workflow(row["pipeline_name"], row["pipeline_version"])
                self._take_over(tx, row)
                run = load_run(self, tx, wf, row)
                first = run.start_ready(tx)
        if run is None:
            return self.get(key)
        return self._drive(run, first)

    def _stale(self, claimed_by: str | None, heartbeat_at: Any) -> bool:
        if not claimed_by:
            return True
        if claimed_by == self.worker_id or owner_is_dead(claimed_by):
            return True
        beat = parse_timestamp(heartbeat_at)
        return beat is None or beat.timestamp() < time.time() - self.lease

    def _take_over(self, tx: Tx, row: Row) -> None:
        owner = row["claimed_by"]
        if not self._stale(owner, row["heartbeat_at"]):
            raise ExecutionStateError(
                f"execution {row['id']} is being run by live process {owner}; it can be resumed "
                f"once that process exits or its lease ({self.lease:g}s) expires"
            )
        now = timestamp()
        claimed = tx.execute(
            "claim_execution",
            {
                "id": str(row["id"]),
                "worker": self.worker_id,
                "previous": owner or "",
                "recovered": 1 if owner else 0,
                "now": now,
            },
        )
        if not claimed:
            raise ExecutionStateError(f"execution {row['id']} was taken over by another process")
        for task in tx.fetch_all("get_tasks", {"id": str(row["id"])}):
            if task["status"] == RUNNING and self._stale(task["claimed_by"], task["heartbeat_at"]):
                self._recover_task(tx, task, now)

    def _recover_task(self, tx: Tx, task: Row, now: str) -> bool:
        """Return a lost claim's task to ``ready``, or abandon it past the recovery cap;
        True when it was abandoned (its dependents may now be decided)."""
        abandoned = task["recovery_attempts"] + 1 > self.max_recovery_attempts
        changed = tx.execute(
            "recover_task",
            {
                "id": str(task["id"]),
                "previous": task["claimed_by"],
                "status": ABANDONED if abandoned else READY,
                "error": (
                    f"abandoned after {task['recovery_attempts'] + 1} recoveries of lost claims"
                    if abandoned
                    else None
                ),
                "now": now,
            },
        )
        return abandoned and changed > 0

    # -- heartbeats ----------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heart is None or not self._heart.is_alive():
                self._stop.clear()
                self._heart = threading.Thread(
                    target=self._beat_forever, name="durably-heartbeat", daemon=True
                )
                self._heart.start()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.beat()
            except Exception:  # a missed beat is retried; the lease tolerates two
                continue

    def beat(self) -> None:
        """Refresh the heartbeat of every claim this engine holds."""
        with self.store.transaction() as tx:
            params = {"worker": self.worker_id, "now": timestamp()}
            tx.execute("heartbeat_executions", params)
            tx.execute("heartbeat_tasks", params)

    def beat_task(self, task_id: str) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "heartbeat_task", {"id": task_id, "worker": self.worker_id, "now": timestamp()}
            )

    def call_compensation(self, fn: Callable[..., Any], ctx: Context) -> None:
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(fn(ctx), self.executor.loop).result()
        else:
            fn(ctx)

    # -- inspection ----------------------------------------------------------------------------

    def _execution_row(self, tx: Tx, execution_id: str) -> Row:
        row = tx.fetch_one("get_execution", {"id": execution_id})
        if row is None:
            raise ExecutionNotFound(f"no execution with id {execution_id}")
        return row

    def get(self, execution_id: UUID | str) -> ExecutionResult:
        """The execution as stored now, with every task's outcome and saved output."""
        key = _as_id(execution_id)
        with self.store.read() as tx:
            row = self._execution_row(tx, key)
            tasks = tx.fetch_all("get_tasks", {"id": key})
            outputs = {r["task_name"]: r["value"] for r in tx.fetch_all("get_outputs", {"id": key})}
            final_id = row["final_context_id"]
            final = tx.fetch_one("get_context", {"id": str(final_id or row["context_id"])})
        if final_id is None:
            wf = self._workflows.get((row["pipeline_name"], row["pipeline_version"]))
            if wf is not None and final is not None:
                states = [TaskState.from_row(t) for t in tasks]
                context = Run(self, wf, key, final["value"], states, outputs).final_context()
            else:
                context = codec.loads(final["value"]) if final else {}
        else:
            context = codec.loads(final["value"]) if final else {}
        return ExecutionResult(
            execution_id=UUID(key),
            workflow=row["pipeline_name"],
            status=row["status"],
            context=Context(context),
            error=row["error_details"],
            tasks={
                t["task_name"]: TaskResult(
                    status=t["status"],
                    attempts=t["attempt"],
                    error=t["error_details"]
                    or (t["last_error"] if t["status"] != COMPLETED else None),
                    context=Context(codec.loads(outputs[t["task_name"]]))
                    if t["task_name"] in outputs
                    else None,
                    started_at=parse_timestamp(t["started_at"]),
                    completed_at=parse_timestamp(t["completed_at"]),
                    compensation=t["compensation_status"],
                )
                for t in tasks
            },
            version=row["pipeline_version"],
            created_at=parse_timestamp(row["created_at"]),
            completed_at=parse_timestamp(row["completed_at"]),
        )

    def list(
        self, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> builtins.list[ExecutionResult]:
        """Executions, newest first (without per-task detail: use ``get`` for that)."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be an int >= 1")
        with self.store.read() as tx:
            rows = tx.fetch_all(
                "list_executions", {"status": status, "workflow": workflow, "limit": limit}
            )
        return [
            ExecutionResult(
                execution_id=UUID(str(row["id"])),
                workflow=row["pipeline_name"],
                status=row["status"],
                context=Context(),
                error=row["error_details"],
                version=row["pipeline_version"],
                created_at=parse_timestamp(row["created_at"]),
                completed_at=parse_timestamp(row["completed_at"]),
            )
            for row in rows
        ]

    def task_context(self, execution_id: UUID | str, task_name: str) -> Context:
        """The output context ``task_name`` saved in that execution."""
        key = _as_id(execution_id)
        with self.store.read() as tx:
            self._execution_row(tx, key)
            row = tx.fetch_one("get_task_output", {"id": key, "name": task_name})
        if row is None:
            raise ExecutionNotFound(
                f"task {task_name!r} of execution {key} has no saved context "
                "(unknown task, or it did not complete)"
            )
        return Context(codec.loads(row["value"]))

    def wait(self, execution_id: UUID | str, timeout: float | None = None) -> ExecutionResult:
        """Block until the execution is terminal; TimeoutError after ``timeout`` seconds."""
        key = _as_id(execution_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            with self.store.read() as tx:
                status = self._execution_row(tx, key)["status"]
            if status in EXECUTION_TERMINAL:
                return self.get(key)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"execution {key} is still {status} after {timeout}s")
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            self.store.wait_for_work(pause)
            delay = min(delay * 2, 0.5)

    # -- operations ----------------------------------------------------------------------------

    def cancel(self, execution_id: UUID | str) -> ExecutionResult:
        """Stop an execution: tasks not yet started are skipped, running ones finish."""
        key = _as_id(execution_id)
        with self.store.transaction() as tx:
            row = self._execution_row(tx, key)
            if row["status"] not in EXECUTION_TERMINAL:
                params = {"id": key, "now": timestamp(), "error": "cancelled"}
                tx.execute("cancel_execution", params)
                tx.execute("cancel_tasks", params)
        with self._lock:
            run = self._runs.get(key)
        if run is not None:
            run.cancelled = True
        return self.get(key)

    def retry(self, execution_id: UUID | str) -> ExecutionResult:
        """Run the failed, skipped and abandoned tasks of a failed or cancelled execution
        again, keeping completed ones, and return when it is terminal. A completed task whose
        compensation ran was undone, so it runs again too, with every task after it."""
        key = _as_id(execution_id)
        with self.store.transaction() as tx:
            row = self._execution_row(tx, key)
            if row["status"] not in (FAILED, "cancelled"):
                raise ExecutionStateError(
                    f"execution {key} is {row['status']}: only failed or cancelled "
                    "executions can be retried"
                )
            wf = self._workflow(row["pipeline_name"], row["pipeline_version"])
            now = timestamp()
            tasks = {task["task_name"]: task for task in tx.fetch_all("get_tasks", {"id": key})}
            again: set[str] = set()
            for name, task in tasks.items():
                if task["status"] in (FAILED, SKIPPED, ABANDONED) or (
                    task["compensation_status"] == COMPLETED
                ):
                    again |= _downstream(wf, name)
            for name in again:
                tx.execute("reset_task", {"id": str(tasks[name]["id"]), "now": now})
                tx.execute("delete_output", {"id": key, "name": name})
            tx.execute("reopen_execution", {"id": key, "status": RUNNING, "now": now})
        return self.resume(key)

    def fork(
        self,
        execution_id: UUID | str,
        from_task: str,
        context_patch: Mapping[str, Any] | None = None,
    ) -> ExecutionResult:
        """A new execution that reuses the outputs of every task not downstream of
        ``from_task``, runs ``from_task`` (its input updated with ``context_patch``) and what
        follows it, and returns when it is terminal."""
        key = _as_id(execution_id)
        with self.store.transaction() as tx:
            row = self._execution_row(tx, key)
            wf = self._workflow(row["pipeline_name"], row["pipeline_version"])
            if from_task not in wf.tasks:
                raise WorkflowDefinitionError(f"workflow {wf.name!r} has no task {from_task!r}")
            downstream = _downstream(wf, from_task)
            outputs = {r["task_name"]: r for r in tx.fetch_all("get_output_ids", {"id": key})}
            copied = {
                t["task_name"]: t
                for t in tx.fetch_all("get_tasks", {"id": key})
                if t["status"] == COMPLETED
                and t["task_name"] not in downstream
                and t["task_name"] in outputs
            }
            configuration = {}
            if context_patch:
                # Kept as codec text: a jsonb column would reorder the patch's keys.
                patch = codec.dumps(dict(context_patch))
                template = next(t for t in self._template(wf) if t["name"] == from_task)
                config = json.loads(template["configuration"])
                configuration[from_task] = json.dumps({**config, "context_patch": patch})
            new_id, _ = self._create(
                tx,
                wf,
                None,
                claimed=True,
                context_id=str(row["context_id"]),
                parent_id=key,
                copied=copied,
                configuration=configuration,
            )
            now = timestamp()
            new_tasks = {t["task_name"]: t for t in tx.fetch_all("get_tasks", {"id": new_id})}
            for name in copied:
                tx.execute(
                    "save_output",
                    {
                        "id": str(uuid.uuid4()),
                        "task_id": str(new_tasks[name]["id"]),
                        "execution_id": new_id,
                        "name": name,
                        "context_id": str(outputs[name]["context_id"]),
                        "now": now,
                    },
                )
            new_row = self._execution_row(tx, new_id)
            run = load_run(self, tx, wf, new_row)
            first = run.start_ready(tx)
        return self._drive(run, first)

    def worker(self, concurrency: int | None = None, **options: Any) -> Worker:
        """A worker that claims and runs queued tasks of this engine's workflows."""
        from .worker import Worker

        return Worker(self, concurrency=concurrency or self.executor.concurrency, **options)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background threads, release claims and close the database."""
        self._stop.set()
        with self._lock:
            runs = builtins.list(self._runs.values())
        for run in runs:
            run.cancelled = True
        self.executor.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode_initial(context: Context | Mapping[str, Any] | None, max_bytes: int) -> str:
    """The initial context as stored; a bad one raises before anything is written."""
    if context is None:
        return "{}"
    if isinstance(context, Context):
        return codec.dumps(context._data, max_bytes=max_bytes)
    if isinstance(context, Mapping):
        return codec.dumps(context, max_bytes=max_bytes)
    raise TypeError(f"context must be a Context or a dict, not {type(context).__name__}")


def _downstream(wf: Workflow, start: str) -> set[str]:
    dependents = wf.dependents()
    seen = {start}
    stack = [start]
    while stack:
        for child in dependents[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen
