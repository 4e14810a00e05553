"""Context rows stored as what changed (issue 14, point 2): the delta format itself, pure,
and every reader getting the full context back on both backends (SPEC §3.1 unchanged)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from durably import Context, Engine, Workflow
from durably.codec import dumps
from durably.repository import Repository
from durably.repository.deltas import (
    SHARE,
    SavedRow,
    applied,
    delta_of,
    members_of,
    resolve,
    rest_on,
    text_of,
)

from .conftest import unique
from .test_retention import Raw

PAYLOAD = "x" * 1000

# -- the format, pure --------------------------------------------------------------------------


def stored_as(text: str, base_text: str) -> str | None:
    """The delta ``text`` is stored as on a full row holding ``base_text`` (None: full)."""
    base, delta, _ = rest_on(text, [SavedRow("b", base_text)])
    assert base is None or delta is not None
    return delta


def rebuilt(base_text: str, delta: str) -> str:
    return text_of(applied(members_of(base_text), delta))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"p": PAYLOAD, "a": 1}, {"p": PAYLOAD, "a": 1, "b": 2}),  # a key added
        ({"p": PAYLOAD, "a": 1, "tmp": [1]}, {"p": PAYLOAD, "a": 1}),  # a key deleted
        ({"p": PAYLOAD, "a": 1}, {"p": PAYLOAD, "a": {"n": [1, 2]}}),  # a value changed
        ({"p": PAYLOAD, "a": 1, "b": 2}, {"p": PAYLOAD, "b": 2, "a": 1}),  # reordered
        ({"p": PAYLOAD, "a": 1}, {"p": PAYLOAD, "é漢🙂": "ü\u2028\x00"}),  # unicode
        ({"p": PAYLOAD}, {"p": PAYLOAD, "t": datetime(2026, 1, 1, tzinfo=UTC), "d": Decimal(1)}),
        ({"p": PAYLOAD, "s": {1, 2}}, {"p": PAYLOAD, "s": (1, 2), "f": 0.1, "big": 10**30}),
    ],
)
def test_a_delta_rebuilds_exactly_the_text_it_was_made_from(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    base, text = dumps(before), dumps(after)
    delta = stored_as(text, base)
    assert delta is not None, "a 1 KB context with a small change is stored as a delta"
    assert len(delta) < 200
    assert rebuilt(base, delta) == text


def test_the_delta_names_only_what_changed() -> None:
    base = dumps({"p": PAYLOAD, "a": 1, "gone": 2, "same": [1]})
    assert stored_as(dumps({"p": PAYLOAD, "a": 3, "same": [1], "new": None}), base) == (
        '{"set":{"a":3,"new":null},"deleted":["gone"]}'
    )
    # A key set back to its base's value is no change at all: the base row is the output.
    same = dumps({"p": PAYLOAD, "a": 1, "gone": 2, "same": [1]})
    row = SavedRow("b", base)
    assert rest_on(same, [row]) == (row, None, None)


def test_a_key_moved_is_deleted_and_set_again() -> None:
    base = dumps({"p": PAYLOAD, "a": 1, "b": 2})
    text = dumps({"p": PAYLOAD, "b": 2, "a": 1})
    delta = stored_as(text, base)
    assert delta == '{"set":{"a":1},"deleted":["a"]}'
    assert rebuilt(base, delta) == text


def test_small_or_rewritten_contexts_are_stored_in_full() -> None:
    assert stored_as(dumps({"a": 2}), dumps({"a": 1})) is None  # the reference costs more
    base = dumps({"p": PAYLOAD})
    assert stored_as(dumps({"p": "y" * 1000}), base) is None  # no smaller than the text
    # Moving the big key would rewrite it: cheaper in full.
    assert stored_as(dumps({"a": 1, "p": PAYLOAD}), dumps({"p": PAYLOAD, "a": 1})) is None
    # A context holding the tag key is written as one tagged value: changing any key
    # changes that value, so it is stored in full (and read back as it was).
    tagged = {"p": PAYLOAD, "$durably": "x"}
    assert stored_as(dumps({**tagged, "a": 1}), dumps(tagged)) is None


def test_a_chain_of_tasks_rests_on_one_full_row_until_its_changes_outgrow_it() -> None:
    """Each output is what changed since the chain's last full row, never a delta on a
    delta: any row reads as itself and at most one more."""
    rows = {"r0": (dumps({"p": PAYLOAD}), None)}
    row = resolve(rows, ["r0"])["r0"]
    full = []
    for i in range(1, 300):
        text = dumps({**json.loads(row.text), f"key{i}": i})  # a growing context
        base, delta, _ = rest_on(text, [row])
        rows[f"r{i}"] = (delta, base.id) if base is not None and delta else (text, None)
        if delta is None:
            full.append(i)
        row = resolve(rows, [f"r{i}"])[f"r{i}"]
        assert row.text == text
        assert row.base is None or row.base.base is None
        assert len(rows[f"r{i}"][0]) <= len(text) // SHARE or row.base is None
    # A full row once the changes since the last reach a quarter of the text: rarely.
    assert len(full) >= 3
    assert all(b - a >= 20 for a, b in zip([0, *full], full, strict=False))
    # A context whose keys change in place never needs another full row.
    row = resolve(rows, ["r0"])["r0"]
    for i in range(1, 300):
        base, delta, _ = rest_on(dumps({"p": PAYLOAD, "n": i, "s": str(i) * 5}), [row])
        assert base is not None
        assert delta is not None
        row = SavedRow(f"n{i}", dumps({"p": PAYLOAD, "n": i, "s": str(i) * 5}), base)


def test_the_smallest_delta_among_several_bases_wins() -> None:
    a = SavedRow("a", dumps({"p": PAYLOAD, "x": 1}))
    b = SavedRow("b", dumps({"p": PAYLOAD, "x": 1, "y": 2, "z": 3}))
    text = dumps({"p": PAYLOAD, "x": 1, "y": 2, "z": 3, "w": 4})
    base, delta, _ = rest_on(text, [a, b])
    assert base is b
    assert delta == '{"set":{"w":4}}'


def test_a_row_resting_on_a_missing_row_is_an_error_not_a_wrong_value() -> None:
    with pytest.raises(LookupError, match="rests on"):
        resolve({"r1": ('{"set":{"a":1}}', "r0")}, ["r1"])
    with pytest.raises(LookupError, match="not a full row"):
        resolve({"r1": ('{"set":{"a":1}}', "r0"), "r0": ("{}", "r")}, ["r1"])
    assert delta_of({"a": "1"}, {"a": "1"}) == "{}"


# -- every reader, both backends ----------------------------------------------------------------


def raw_contexts(store_url: str) -> list[tuple[str, str, str | None]]:
    """What the contexts table holds, not what the repository rebuilds."""
    rows = Raw(store_url).query(
        "SELECT CAST(id AS TEXT), value, CAST(base_id AS TEXT) FROM contexts"
    )
    return [(a, b, c) for a, b, c in rows]


def chain(length: int, name: str = "deltas") -> Workflow:
    wf = Workflow(unique(name))
    for i in range(length):

        def task(ctx: Context, i: int = i) -> None:
            ctx[f"k{i}"] = i

        wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else ())(task)
    return wf


def test_a_chain_stores_deltas_and_every_reader_sees_full_contexts(
    engine: Engine, store_url: str
) -> None:
    wf = chain(10)
    result = engine.run(wf, {"payload": PAYLOAD})
    assert result.status == "completed", result.error
    expected = {"payload": PAYLOAD}
    for i in range(10):
        expected[f"k{i}"] = i  # type: ignore[assignment]
        assert engine.task_context(result.execution_id, f"t{i}") == expected
        assert result.tasks[f"t{i}"].context == expected
    assert result.context == expected
    again = engine.get(result.execution_id)
    assert again.context == expected
    assert again.tasks["t3"].context == {"payload": PAYLOAD, "k0": 0, "k1": 1, "k2": 2, "k3": 3}
    rows = raw_contexts(store_url)
    # The initial context in full, one small delta per task, and no copy for the final one.
    assert len(rows) == 11
    assert sum(base is None for _, _, base in rows) == 1
    # Each delta is what changed since the initial context: ten keys at most.
    assert sum(len(value) for _, value, base in rows if base is not None) < 600


def test_show_and_dashboard_diffs_read_through_deltas(engine: Engine) -> None:
    from durably.dashboard import detail
    from durably.json_views import execution_json

    wf = Workflow(unique("diffs"))

    @wf.task()
    def grow(ctx: Context) -> None:
        ctx["items"].append(3)  # in place: the same list object, changed
        ctx["nested"]["a"] = 2
        del ctx["tmp"]

    @wf.task(dependencies=["grow"])
    def back(ctx: Context) -> None:
        ctx["nested"]["a"] = 1  # set back to the initial value

    initial = {"payload": PAYLOAD, "items": [1, 2], "nested": {"a": 1}, "tmp": "t"}
    result = engine.run(wf, initial)
    assert result.status == "completed", result.error
    grown = {"payload": PAYLOAD, "items": [1, 2, 3], "nested": {"a": 2}}
    assert engine.task_context(result.execution_id, "grow") == grown
    assert engine.task_context(result.execution_id, "back") == {**grown, "nested": {"a": 1}}
    shown = execution_json(engine, engine.get(result.execution_id))
    assert shown["tasks"]["grow"]["diff"] == {
        "added": {},
        "changed": {
            "items": {"old": [1, 2], "new": [1, 2, 3]},
            "nested": {"old": {"a": 1}, "new": {"a": 2}},
        },
        "removed": ["tmp"],
    }
    assert shown["tasks"]["back"]["diff"]["changed"] == {
        "nested": {"old": {"a": 2}, "new": {"a": 1}}
    }
    assert shown["context"]["nested"] == {"a": 1}
    page = detail.build(engine, result.execution_id)
    assert json.loads(page.context_json)["items"] == [1, 2, 3]


def test_huge_and_unicode_values_round_trip(engine: Engine, store_url: str) -> None:
    wf = Workflow(unique("huge"))
    big = "é漢🙂" * 50_000

    @wf.task()
    def a(ctx: Context) -> None:
        ctx["big"] = big
        ctx["when"] = datetime(2026, 1, 2, tzinfo=UTC)

    @wf.task(dependencies=["a"])
    def b(ctx: Context) -> None:
        ctx["ключ"] = {"$durably": "not a tag", "v": [1.5, None, True]}
        ctx["amount"] = Decimal("1.10")

    result = engine.run(wf, {"payload": PAYLOAD})
    assert result.status == "completed", result.error
    out = engine.task_context(result.execution_id, "b")
    assert out["big"] == big
    assert out["when"] == datetime(2026, 1, 2, tzinfo=UTC)
    assert out["ключ"] == {"$durably": "not a tag", "v": [1.5, None, True]}
    assert type(out["amount"]) is Decimal
    assert out["amount"] == Decimal("1.10")
    assert result.context == out
    deltas = [value for _, value, base in raw_contexts(store_url) if base is not None]
    # a's output is mostly the big value it added: in full. b's rests on it: its own keys.
    assert len(deltas) == 1
    assert len(deltas[0]) < 200


def test_a_fan_in_and_a_worker_store_deltas_too(engine: Engine, store_url: str) -> None:
    from .workers import running_worker

    wf = Workflow(unique("fanin"))
    wf.task(name="root")(lambda ctx: ctx.update(root=1))
    for name in ("left", "right"):
        wf.task(name=name, dependencies=["root"])(lambda ctx, name=name: ctx.update({name: 1}))
    wf.task(name="sink", dependencies=["left", "right"])(lambda ctx: ctx.update(sink=1))
    engine.register(wf)
    execution_id = engine.start(wf, {"payload": PAYLOAD})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "completed", result.error
    final = {"payload": PAYLOAD, "root": 1, "left": 1, "right": 1, "sink": 1}
    assert result.context == final
    assert engine.task_context(execution_id, "left") == {"payload": PAYLOAD, "root": 1, "left": 1}
    rows = raw_contexts(store_url)
    assert sum(base is None for _, _, base in rows) == 1, "only the initial context is full"


def test_fork_retry_and_prune_keep_every_base(store_url: str) -> None:
    from durably.clock import ManualClock

    clock = ManualClock()
    with Engine(store_url, clock=clock) as engine:
        fail = {"now": True}
        wf = Workflow(unique("forked"))
        for i in range(4):

            def task(ctx: Context, i: int = i) -> None:
                if i == 3 and fail["now"]:
                    raise RuntimeError("not yet")
                ctx[f"k{i}"] = i

            wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else ())(task)
        first = engine.run(wf, {"payload": PAYLOAD})
        assert first.status == "failed"
        fail["now"] = False
        parent = engine.retry(first.execution_id)
        assert parent.status == "completed", parent.error
        expected = {"payload": PAYLOAD, "k0": 0, "k1": 1, "k2": 2, "k3": 3}
        assert parent.context == expected
        clock.advance(40 * 86400)
        child = engine.fork(parent.execution_id, "t2", {"patched": True})
        assert child.status == "completed", child.error
        assert child.context == {**expected, "patched": True}
        # The parent goes: the fork's reused outputs and their bases stay readable.
        assert engine.prune(timedelta(days=30)) == 1
        assert engine.task_context(child.execution_id, "t1") == {
            "payload": PAYLOAD, "k0": 0, "k1": 1,
        }  # fmt: skip
        assert engine.get(child.execution_id).context == {**expected, "patched": True}
        assert engine.snapshot(child.execution_id).initial is not None
        clock.advance(1)
        assert engine.prune(timedelta(0)) == 1
        left = raw_contexts(store_url)
        # Nothing is left behind, not even the failed end's context that retry() unlinked.
        assert left == []


def unreachable_contexts(store_url: str) -> list[str]:
    """Context rows nothing reads: no execution, output or saga references them, and no row
    that is referenced rests on them."""
    raw = Raw(store_url)
    referenced = {
        value
        for (value,) in raw.query(
            "SELECT CAST(context_id AS TEXT) FROM pipeline_executions "
            "UNION SELECT CAST(final_context_id AS TEXT) FROM pipeline_executions "
            "UNION SELECT CAST(context_id AS TEXT) FROM task_execution_metadata "
            "UNION SELECT CAST(context_id AS TEXT) FROM saga_executions"
        )
        if value
    }
    rows = raw_contexts(store_url)
    bases = {base for row_id, _, base in rows if row_id in referenced and base}
    return sorted(row_id for row_id, _, _ in rows if row_id not in referenced | bases)


def test_retry_deletes_the_rows_of_the_outputs_it_unlinks(engine: Engine, store_url: str) -> None:
    """retry() re-runs a task that had completed (after a failed one, by its trigger) and
    fans a mapped task out anew: the rows of their old outputs, and of the failed end's
    context, are deleted with their links, and everything still reads back."""
    broken = {"gate": True}
    wf = Workflow(unique("unlinked"))

    @wf.task()
    def gate(ctx: Context) -> None:
        if broken["gate"]:
            raise RuntimeError("closed")
        ctx["gate"] = "open"

    @wf.task(dependencies=["gate"], trigger="all_done")
    def prepare(ctx: Context) -> None:
        ctx["items"] = [1, 2, 3]

    @wf.task(dependencies=["prepare"], map_over="items")
    def each(ctx: Context, handle: Any) -> None:
        ctx[f"v{handle.index}"] = handle.item * 10

    wf.task(name="after", dependencies=["each"], trigger="all_done")(
        lambda ctx: ctx.update(done=True)
    )
    first = engine.run(wf, {"payload": PAYLOAD})
    assert first.status == "failed"
    assert first.tasks["each[0]"].status == "completed"
    before = {row_id for row_id, _, _ in raw_contexts(store_url)}
    broken["gate"] = False
    result = engine.retry(first.execution_id)
    assert result.status == "completed", result.error
    assert result.context["gate"] == "open"
    assert result.context["done"] is True
    assert engine.task_context(first.execution_id, "prepare")["items"] == [1, 2, 3]
    assert unreachable_contexts(store_url) == []
    after = {row_id for row_id, _, _ in raw_contexts(store_url)}
    assert len(before - after) >= 5, "prepare's, the instances' and after's rows, the end's"


@pytest.mark.parametrize("operation", ["retry", "fork"])
def test_retry_and_fork_wait_for_a_lock_on_their_source(postgres_url: str, operation: str) -> None:
    """retry() deletes the rows of the outputs it discards unless another execution links
    them, so it and fork(), which links a source's rows, take the source's lock first: the
    second to come waits for the first to commit and then sees its links (PostgreSQL; on
    SQLite a write transaction already excludes every other)."""
    import threading

    import psycopg

    with Engine(postgres_url) as engine:
        wf = Workflow(unique("locked"))
        wf.task(name="a")(lambda ctx: ctx.update(a=1))
        wf.task(name="b", dependencies=["a"])(lambda ctx: ctx.update(b=1 / ctx["zero"]))
        source = engine.run(wf, {"payload": PAYLOAD, "zero": 0})
        assert source.status == "failed"
        done: list[str] = []

        def act() -> None:
            if operation == "retry":
                done.append(engine.retry(source.execution_id).status)
            else:
                done.append(engine.fork(source.execution_id, "b", {"zero": 1}).status)

        with psycopg.connect(postgres_url) as other:
            other.execute(
                "SELECT id FROM pipeline_executions WHERE id = %s FOR UPDATE",
                [source.execution_id],
            )
            worker = threading.Thread(target=act)
            worker.start()
            worker.join(0.5)
            assert worker.is_alive(), f"{operation} went on while the source was locked"
        worker.join(30)
        expected = "failed" if operation == "retry" else "completed"
        assert done == [expected]


def test_a_10000_task_chain_reads_a_bounded_number_of_rows(engine: Engine, store_url: str) -> None:
    wf = Workflow(unique("long"))
    wf.task(name="t")(lambda ctx: None)
    execution_id = str(engine.start(wf, {"payload": PAYLOAD}))  # only its row is needed
    repo = Repository()
    names = [f"t{i}" for i in range(10_000)]
    data: dict[str, Any] = {"payload": PAYLOAD}
    with engine.store.transaction() as tx:
        initial = repo.save_context(tx, dumps(data), 0.0)
        repo.saved.keep(execution_id, [("", initial)])
        for i, name in enumerate(names):
            data[f"k{i % 50}"] = i
            task_id = str(uuid.uuid4())
            repo.save_output(tx, execution_id, task_id, name, dumps(data), 0.0, names[i - 1 : i])
    fresh = Repository()  # nothing in memory: everything is read back from the rows
    began = time.perf_counter()
    with engine.store.read() as tx:
        for i in range(0, 10_000, 997):
            rows = tx.fetch_all("get_task_output", {"id": execution_id, "name": names[i]})
            assert len(rows) == 1  # the row, with the full row it rests on joined
            text = fresh.task_output(tx, execution_id, names[i])
            assert text is not None
            assert json.loads(text)[f"k{i % 50}"] == i
        named = fresh.outputs(tx, execution_id, names[-2:])
        everything = fresh.outputs(tx, execution_id)
    assert json.loads(named[names[-1]]) == data
    assert len(everything) == 10_000
    assert json.loads(everything[names[-1]]) == data
    assert time.perf_counter() - began < 10
    stored = raw_contexts(store_url)
    # A full row each time the keys changed since the last one reach a quarter of the text.
    assert sum(base is None for _, _, base in stored) < 10_000 / 20
    assert max(len(value) for _, value, base in stored if base) < len(dumps(data)) / SHARE


def test_mapped_instances_and_a_subworkflow_read_through_deltas(
    engine: Engine, store_url: str
) -> None:
    from .workers import running_worker

    fail = {"now": True}
    wf = Workflow(unique("mapped"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=[1, 2, 3]))

    @wf.task(dependencies=["prepare"], map_over="items", retry=None)
    def each(ctx: Context, handle: Any) -> None:
        if handle.index == 1 and fail["now"]:
            raise RuntimeError("not yet")
        ctx[f"item{handle.index}"] = handle.item * 10

    child = Workflow(unique("child"))
    child.task(name="inner")(lambda ctx: ctx.update(inner=len(ctx["payload"])))
    wf.subworkflow("sub", child, dependencies=["each"])
    wf.task(name="last", dependencies=["sub"])(lambda ctx: ctx.update(last=True))
    first = engine.run(wf, {"payload": PAYLOAD})
    assert first.status == "failed"
    fail["now"] = False
    again = engine.retry(first.execution_id)
    assert again.status == "completed", again.error
    items = {"item0": 10, "item1": 20, "item2": 30}
    final = {"payload": PAYLOAD, "items": [1, 2, 3], **items, "inner": 1000, "last": True}
    assert again.context == final
    assert engine.task_context(again.execution_id, "each") == {
        "payload": PAYLOAD, "items": [1, 2, 3], **items,
    }  # fmt: skip
    # The same on the worker path.
    engine.register(wf)
    engine.register(child)
    execution_id = engine.start(wf, {"payload": PAYLOAD})
    with running_worker(engine):
        done = engine.wait(execution_id, timeout=30)
    assert done.status == "completed", done.error
    assert done.context == final
    assert done.tasks["sub"].context == {k: v for k, v in final.items() if k != "last"}
    deltas = [value for _, value, base in raw_contexts(store_url) if base is not None]
    assert len(deltas) >= 10, "instances, the map, the child's and the parent's tasks"


def test_rows_of_a_rolled_back_transaction_are_never_rested_on(
    engine: Engine, store_url: str
) -> None:
    """A row this process wrote in a transaction that rolled back stays in its memory: the
    statements that would rest on it, link it or end on it check it exists, and the text is
    stored in full instead."""
    wf = Workflow(unique("rollback"))
    wf.task(name="t")(lambda ctx: None)
    execution_id = str(engine.start(wf, {"payload": PAYLOAD}))
    repo = Repository()
    a_text = dumps({"payload": PAYLOAD, "a": 1})

    def doomed() -> None:
        with engine.store.transaction() as tx:
            initial = repo.save_context(tx, dumps({"payload": PAYLOAD}), 0.0)
            repo.saved.keep(execution_id, [("", initial)])
            repo.save_output(tx, execution_id, str(uuid.uuid4()), "a", a_text, 0.0, ())
            raise RuntimeError("the transaction rolls back")

    with pytest.raises(RuntimeError):
        doomed()
    b_text = dumps({"payload": PAYLOAD, "a": 1, "b": 2})
    with engine.store.transaction() as tx:
        repo.save_output(tx, execution_id, str(uuid.uuid4()), "b", b_text, 0.0, ["a"])
        repo.save_output(tx, execution_id, str(uuid.uuid4()), "c", a_text, 0.0, ["a"])
        repo.finish_execution(tx, execution_id, "completed", a_text, None, 0.0, sources=["a"])
    with engine.store.read() as tx:
        fresh = Repository()
        assert fresh.outputs(tx, execution_id) == {"b": b_text, "c": a_text}
        snapshot = fresh.snapshot(tx, execution_id)
    assert snapshot is not None
    assert snapshot.final == a_text
    raw = Raw(store_url)
    dangling = raw.query(
        "SELECT count(*) FROM contexts c WHERE c.base_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM contexts b WHERE b.id = c.base_id)"
    )
    assert dangling == [(0,)]
    unlinked = raw.query(
        "SELECT count(*) FROM task_execution_metadata m "
        "WHERE NOT EXISTS (SELECT 1 FROM contexts c WHERE c.id = m.context_id)"
    )
    assert unlinked == [(0,)]


def test_the_cli_shows_contexts_and_diffs_read_through_deltas(
    engine: Engine, store_url: str
) -> None:
    from click.testing import CliRunner

    from durably.cli import cli as durably_cli

    wf = chain(4, "cli")
    result = engine.run(wf, {"payload": PAYLOAD})
    assert result.status == "completed", result.error
    runner = CliRunner()
    shown = runner.invoke(
        durably_cli,
        ["context", str(result.execution_id), "--task", "t2", "--db", store_url, "--json"],
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {"payload": PAYLOAD, "k0": 0, "k1": 1, "k2": 2}
    show = runner.invoke(
        durably_cli, ["show", str(result.execution_id), "--db", store_url, "--json"]
    )
    assert show.exit_code == 0, show.output
    tasks = json.loads(show.output)["tasks"]
    assert tasks["t3"]["diff"] == {"added": {"k3": 3}, "changed": {}, "removed": []}


def test_a_fork_copies_a_delta_whose_base_it_does_not_keep(engine: Engine, store_url: str) -> None:
    wf = Workflow(unique("share"))
    wf.task(name="t")(lambda ctx: None)
    source, fork = (str(engine.start(wf, {"payload": PAYLOAD})) for _ in range(2))
    repo = Repository()
    x_text = dumps({"payload": PAYLOAD, "x": 1})
    fork_initial = engine.snapshot(fork).execution.context_id
    with engine.store.transaction() as tx:
        unlinked = repo.save_context(tx, dumps({"payload": PAYLOAD}), 0.0)  # nobody's output
        delta = repo.save_context(tx, x_text, 0.0, [unlinked])
        assert delta.base is unlinked
        repo.link_output(tx, source, str(uuid.uuid4()), "x", delta.id, 0.0)
        repo.share_outputs(tx, source, fork, {"x": str(uuid.uuid4())}, fork_initial, 0.0)
    with engine.store.read() as tx:
        assert Repository().outputs(tx, fork) == {"x": x_text}
    linked = Raw(store_url).query(
        "SELECT CAST(c.id AS TEXT), c.base_id FROM task_execution_metadata m "
        "JOIN contexts c ON c.id = m.context_id WHERE CAST(m.pipeline_execution_id AS TEXT) = %s",
        fork,
    )
    assert len(linked) == 1
    assert linked[0][0] != delta.id  # a copy of its own, in full
    assert linked[0][1] is None


# -- existing databases ----------------------------------------------------------------------


def _version_12_database(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database migrated up to 0012 only, as an older durably left it: an empty schema
    brought up by the migration scripts themselves."""
    from durably import sql
    from durably.store import iter_statements

    scripts = [(v, script) for v, script in sql.migrations(backend) if v <= 12]
    if backend == "sqlite":
        import sqlite3

        path = tmp_path / "v12.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for version, script in scripts:
            for statement in iter_statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, 'then')", (version,))
        conn.execute("COMMIT")
        conn.close()
        return f"sqlite:///{path}"
    import psycopg

    url: str = request.getfixturevalue("make_pg_database")(migrated=False)
    with psycopg.connect(url) as pg:
        pg.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version, script in scripts:
            for statement in iter_statements(script):
                pg.execute(statement)  # type: ignore[call-overload]
            pg.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return url


def test_full_rows_of_a_version_12_database_read_back_after_the_upgrade(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    url = _version_12_database(backend, request, tmp_path)
    raw = Raw(url)
    now = "2026-01-01T00:00:00+00:00"
    ids = {name: str(uuid.uuid4()) for name in ("c0", "c1", "c2", "e", "t", "m")}
    initial, output = dumps({"payload": PAYLOAD}), dumps({"payload": PAYLOAD, "a": 1})
    for key, value in (("c0", initial), ("c1", output), ("c2", output)):
        raw.query("INSERT INTO contexts VALUES (%s, %s, %s, %s)", ids[key], value, now, now)
    raw.query(
        "INSERT INTO pipeline_executions (id, pipeline_name, pipeline_version, status, "
        "context_id, final_context_id, created_at, updated_at, completed_at) "
        "VALUES (%s, 'old', 'v', 'completed', %s, %s, %s, %s, %s)",
        ids["e"], ids["c0"], ids["c2"], now, now, now,
    )  # fmt: skip
    raw.query(
        "INSERT INTO task_executions (id, pipeline_execution_id, task_name, position, status, "
        "created_at, updated_at) VALUES (%s, %s, 'a', 0, 'completed', %s, %s)",
        ids["t"], ids["e"], now, now,
    )  # fmt: skip
    raw.query(
        "INSERT INTO task_execution_metadata VALUES (%s, %s, %s, 'a', %s, %s, %s)",
        ids["m"], ids["t"], ids["e"], ids["c1"], now, now,
    )  # fmt: skip
    with Engine(url) as engine:  # opening it migrates it
        assert engine.store.schema_version() >= 14
        assert engine.task_context(ids["e"], "a") == {"payload": PAYLOAD, "a": 1}
        snapshot = engine.snapshot(ids["e"])
        assert snapshot.outputs == {"a": output}
        assert snapshot.initial == initial
        assert snapshot.final == output
        # New executions beside the old rows store deltas; the old rows stay as they were.
        result = engine.run(chain(3), {"payload": PAYLOAD})
        assert result.status == "completed", result.error
        assert engine.task_context(result.execution_id, "t2") == {
            "payload": PAYLOAD, "k0": 0, "k1": 1, "k2": 2,
        }  # fmt: skip
    stored = {row_id: (value, base) for row_id, value, base in raw_contexts(url)}
    assert all(stored[ids[key]][1] is None for key in ("c0", "c1", "c2"))
    assert sum(base is not None for _, base in stored.values()) == 3
