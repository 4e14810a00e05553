"""The database cost of running a workflow in-process (SPEC §3.1 rule 7, issue 3).

The scheduler's module docstring states the cost: ONE write transaction per completed task, in
which the task's output context is inserted, its metadata row points at it, the task is marked
completed, and the dependents it made runnable are claimed (or skipped by their trigger); the
transaction completing the last task also writes the final context and the execution's status.
Derived from that and the code, per transaction:

    start (engine.run)     insert_context (initial), insert_execution, insert_task (one
                           executemany), start_task per root                       = 3 + roots
    a task completes       complete_task, insert_context (or insert_context_delta: what it
                           changed; none when its output is its input's row unchanged),
                           save_output,
                           + start_task per dependent it made runnable             = 3 + runnable
    ...the last one also   save_final_fallback (a full copy, only if the last output's
                           row it points at is gone), finish_execution; insert_context
                           first only when the final context is no saved row       = + 2
    get() (end of run)     read: get_execution, get_tasks, get_outputs (the final
                           context among them), get_attempts                      = 4

So a 10-task chain costs 11 write transactions (45 statements) and 1 read (4 statements):
12 transactions, 49 statements. The task row is its current attempt's history entry:
task_attempts gets a row only for an attempt that a later one supersedes (a retry, a lost
claim), so attempts cost nothing on the common path. Dependency outputs are cached in memory
by the run, so a task with 50 dependencies builds its input without a single extra statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from durably import Context, Engine, RetryPolicy, Workflow
from durably.store import Store, Tx

from .conftest import unique


class _SpyTx(Tx):
    def __init__(self, tx: Tx, calls: list[tuple[str, str]]) -> None:
        self._tx = tx
        self._calls = calls

    def execute(self, name: str, params: Any = None) -> int:
        self._calls.append(("execute", name))
        return self._tx.execute(name, params)

    def execute_many(self, name: str, params: Iterable[Any]) -> None:
        self._calls.append(("execute_many", name))
        self._tx.execute_many(name, params)

    def fetch_one(self, name: str, params: Any = None) -> Any:
        self._calls.append(("fetch_one", name))
        return self._tx.fetch_one(name, params)

    def fetch_all(self, name: str, params: Any = None) -> list[Any]:
        self._calls.append(("fetch_all", name))
        return self._tx.fetch_all(name, params)

    def fetch_batch(self, statements: Any) -> list[list[Any]]:
        self._calls.extend(("fetch_batch", name) for name, _ in statements)
        return self._tx.fetch_batch(statements)


class Recorder:
    """Every committed transaction of a store: ("write" | "read", [statement names])."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, list[str]]] = []
        self.verbs: list[tuple[str, str]] = []
        for kind, attr in (("write", "transaction"), ("read", "read")):
            monkeypatch.setattr(store, attr, self._wrap(kind, getattr(store, attr)))

    def _wrap(self, kind: str, real: Any) -> Any:
        @contextmanager
        def opened(**options: Any) -> Iterator[Tx]:
            calls: list[tuple[str, str]] = []
            with real(**options) as tx:
                yield _SpyTx(tx, calls)
            self.log.append((kind, [name for _, name in calls]))
            self.verbs.extend(calls)

        return opened

    def clear(self) -> None:
        self.log.clear()
        self.verbs.clear()

    def writes(self) -> list[list[str]]:
        return [names for kind, names in self.log if kind == "write"]

    def reads(self) -> list[list[str]]:
        return [names for kind, names in self.log if kind == "read"]


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    # A long lease: the heartbeat thread (every lease/3) must not add transactions mid-count.
    e = Engine(store_url, lease=3600)
    yield e
    e.close()


@pytest.fixture
def recorder(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder(engine.store, monkeypatch)


def setter(**values: Any) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx.update(values)

    return task


def chain(length: int) -> Workflow:
    wf = Workflow(unique("chain"))
    for i in range(length):
        wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else [])(setter(**{f"k{i}": i}))
    return wf


# A definition's first start in a process stores its task configurations (its second finds
# them committed); every later one skips it: NEXT_START.
START = ["insert_context", "insert_task_configurations", "insert_execution", "insert_task"]
NEXT_START = ["insert_context", "insert_execution", "insert_task"]
COMPLETE = ["complete_task", "insert_context", "save_output"]
UNCHANGED = ["complete_task", "link_saved_output"]  # its output is its input's row
# The final context is a saved row, the last output's (copied in full only if it is gone).
FINISH = ["save_final_fallback", "finish_execution"]
GET = ["get_execution", "get_tasks", "get_outputs", "get_attempts"]


def test_a_10_task_chain_costs_one_write_transaction_per_task_plus_one(
    engine: Engine, recorder: Recorder
) -> None:
    wf = chain(10)
    engine.store.stats.reset()
    result = engine.run(wf, {"start": True})
    assert result.status == "completed", result.error
    assert result.context == {"start": True, **{f"k{i}": i for i in range(10)}}

    stats = engine.store.stats
    assert stats.transactions == 12  # 1 start + 10 completions + 1 read by get()
    assert stats.statements == 50  # 5 + 9 * 4 + 5 + 4

    writes = recorder.writes()
    assert len(writes) == 11
    assert writes[0] == [*START, "start_task"]
    # Once the context outgrows a reference, an output is the delta on its input's row.
    writes = [[name.removesuffix("_delta") for name in names] for names in writes]
    for names in writes[1:10]:
        assert names == [*COMPLETE, "start_task"]
    assert writes[10] == [*COMPLETE, *FINISH]
    assert recorder.reads() == [GET]
    # Rule 7: the output context is saved in the transaction that marks the task completed,
    # and no write transaction reads anything.
    assert all(verb.startswith("execute") for verb, _ in recorder.verbs[: sum(map(len, writes))])

    # The same formula at other lengths: linear in the number of tasks.
    costs = {}
    for length in (1, 5, 20):
        engine.store.stats.reset()
        assert engine.run(chain(length)).status == "completed"
        costs[length] = (engine.store.stats.transactions, engine.store.stats.statements)
    assert costs == {
        1: (3, 5 + 5 + 4),
        5: (7, 5 + 4 * 4 + 5 + 4),
        20: (22, 5 + 19 * 4 + 5 + 4),
    }


def test_later_starts_of_a_definition_do_not_store_its_configurations_again(
    engine: Engine, recorder: Recorder
) -> None:
    wf = chain(3)
    for _ in range(2):  # the first stores them, the second finds them committed
        assert engine.run(wf).status == "completed"
    recorder.clear()
    engine.store.stats.reset()
    assert engine.run(wf).status == "completed"
    assert recorder.writes()[0] == [*NEXT_START, "start_task"]
    assert engine.store.stats.statements == 4 + 2 * 4 + 5 + 4


def test_a_task_with_50_dependencies_loads_its_inputs_without_extra_statements(
    engine: Engine, recorder: Recorder
) -> None:
    wf = Workflow(unique("fanin"))
    width = 50
    for i in range(width):
        wf.task(name=f"r{i}")(setter(**{f"r{i}": i, "last": i}))
    seen: list[dict[str, Any]] = []
    wf.task(name="sink", dependencies=[f"r{i}" for i in range(width)])(
        lambda ctx: seen.append(dict(ctx))
    )

    engine.store.stats.reset()
    result = engine.run(wf)
    assert result.status == "completed", result.error
    assert seen == [{**{f"r{i}": i for i in range(width)}, "last": width - 1}]

    # 1 start + 50 root completions + the sink's completion + the read of get().
    assert engine.store.stats.transactions == width + 3
    # start: 3 + 50 start_task; roots: 3 each, +1 for the one that made the sink runnable;
    # the sink: 3 + 2 (it is the last task: FINISH); get(): 4.
    assert engine.store.stats.statements == (4 + width) + (3 * width + 1) + 5 + 4

    writes = recorder.writes()
    assert writes[0] == START + ["start_task"] * width
    completions = writes[1 : width + 1]
    assert sorted(completions) == sorted([COMPLETE] * (width - 1) + [[*COMPLETE, "start_task"]])
    assert writes[width + 1] == [*COMPLETE, *FINISH]
    assert recorder.reads() == [GET]  # nothing read between the roots and the sink


def _failing_sink(width: int, fail: dict[str, bool]) -> Workflow:
    wf = Workflow(unique("retry_cost"))
    for i in range(width):
        wf.task(name=f"r{i}")(setter(**{f"r{i}": i}))

    @wf.task(dependencies=[f"r{i}" for i in range(width)])
    def sink(ctx: Context) -> None:
        if fail["now"]:
            raise RuntimeError("not yet")
        ctx["n"] = len(ctx)

    return wf


def test_resuming_loads_every_dependency_output_with_one_query(
    engine: Engine, recorder: Recorder
) -> None:
    costs: dict[int, tuple[int, int]] = {}
    for width in (5, 50):
        fail = {"now": True}
        wf = _failing_sink(width, fail)
        first = engine.run(wf)
        assert first.status == "failed"
        fail["now"] = False
        engine.store.stats.reset()
        recorder.clear()
        again = engine.retry(first.execution_id)
        assert again.status == "completed", again.error
        assert again.tasks["sink"].context["n"] == width  # type: ignore[index]
        costs[width] = (engine.store.stats.transactions, engine.store.stats.statements)
        loads = [name for _, name in recorder.verbs if name in ("get_outputs", "get_task_output")]
        assert loads == ["get_outputs", "get_outputs"]  # the run's one load, and get()'s
    assert costs[5] == costs[50]  # independent of the number of dependencies


def test_a_fan_out_claims_every_dependent_in_the_completing_transaction(
    engine: Engine, recorder: Recorder
) -> None:
    wf = Workflow(unique("fanout"))
    wf.task(name="root")(lambda ctx: ctx.update(root=1))
    for name in ("a", "b", "c"):
        wf.task(name=name, dependencies=["root"])(lambda ctx: None)
    engine.store.stats.reset()
    assert engine.run(wf).status == "completed"
    assert engine.store.stats.transactions == 4 + 2  # one per task, the start, the read
    writes = recorder.writes()
    assert writes[1] == [*COMPLETE, "start_task", "start_task", "start_task"]
    # a, b and c change nothing: each output is root's row, linked again.
    assert sorted(writes[2:]) == sorted([UNCHANGED, UNCHANGED, [*UNCHANGED, *FINISH]])


def test_a_failure_settles_skipped_dependents_in_the_same_transaction(
    engine: Engine, recorder: Recorder
) -> None:
    wf = Workflow(unique("skip_cost"))

    @wf.task()
    def a(ctx: Context) -> None:
        raise RuntimeError("no")

    wf.task(name="b", dependencies=["a"])(lambda ctx: None)
    wf.task(name="c", dependencies=["b"])(lambda ctx: None)
    engine.store.stats.reset()
    assert engine.run(wf).status == "failed"
    assert recorder.writes() == [
        [*START, "start_task"],
        # The final context is the initial one: its row, with nothing written.
        ["fail_task", "settle_unstarted_task", "settle_unstarted_task", *FINISH],
    ]
    assert engine.store.stats.transactions == 3


def test_a_retried_attempt_costs_one_more_transaction_for_the_failure_and_one_to_restart(
    engine: Engine, recorder: Recorder
) -> None:
    wf = Workflow(unique("retry_once"))

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False))
    def flaky(ctx: Context, handle: Any) -> None:
        if handle.attempt == 1:
            raise ConnectionError("once")

    engine.store.stats.reset()
    result = engine.run(wf)
    assert result.status == "completed"
    assert result.tasks["flaky"].attempts == 2
    assert recorder.writes() == [
        [*START, "start_task"],
        ["retry_task_later", "insert_attempt"],
        ["start_task"],
        [*UNCHANGED, *FINISH],  # the empty context is unchanged: the initial row again
    ]
    assert engine.store.stats.transactions == 5
