"""What a worker's claim costs in round trips to the database, with and without flow limits
(SPEC §3.5, issue 11), and that the limits hold when two claimers race.

A limited claim runs two statements where a plain claim runs one: ``lock_flow`` (a
transaction lock per limited key, on PostgreSQL) and ``claim_limited_tasks``, whose counts
must be read once the lock is held. They travel together (``Tx.fetch_batch``: PostgreSQL's
pipeline mode), so a limited claim that fills its batch waits on the network as often as a
plain one; one that comes back short sends its follow-ups (``claim_tasks``, ``next_token``)
together too: one round trip more. The store's own count (``StoreStats.round_trips``) is
checked against the wire, through a proxy that counts the times the server answered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from durably import Concurrency, Engine, RateLimit, Workflow
from durably.store import StoreStats

from .conftest import unique


class WireCounter:
    """A TCP proxy to the server that counts round trips on the wire: each time the server
    answers after its client sent something (however many packets either side sends)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.round_trips = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            asked = [False]  # this connection's client spoke since the server last did
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, asking in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, asking, asked), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, asking: bool, asked: list[bool]
    ) -> None:
        try:
            while data := source.recv(65536):
                # Noted before it is passed on: the answer cannot come first.
                with self._lock:
                    if asking:
                        asked[0] = True
                    elif asked[0]:
                        asked[0] = False
                        self.round_trips += 1
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def wire(postgres_url: str) -> Iterator[tuple[WireCounter, str]]:
    """The proxy, and a URL through it with a pool of one connection (all of a claim's
    traffic on the one connection the proxy watches)."""
    parts = urlsplit(postgres_url)
    counter = WireCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{counter.port}"
    yield counter, parts._replace(netloc=netloc, query="min_size=1&max_size=1").geturl()
    counter.close()


def one_task(name: str, **limits: Any) -> Workflow:
    wf = Workflow(unique(name), concurrency=limits.pop("workflow", None))
    wf.task(name="only", **limits)(lambda ctx: None)
    return wf


KINDS: dict[str, Callable[[], Workflow]] = {
    "unlimited": lambda: one_task("plain"),
    "task concurrency": lambda: one_task("task_limited", concurrency=50),
    "workflow concurrency": lambda: one_task("wf_limited", workflow=Concurrency(50)),
    "rate limit": lambda: one_task("rated", rate_limit=RateLimit(unique("bucket"), 10_000)),
}


def claim_costs(counter: WireCounter, url: str, wf: Workflow) -> dict[str, tuple[int, int]]:
    """A full claim's and a short claim's round trips: (counted by the store, seen on the
    wire), on a worker serving only ``wf``."""
    # A long lease: no heartbeat runs in the middle of a measured claim.
    with Engine(url, workflows=[wf], lease=3600) as engine:
        for _ in range(12):
            engine.start(wf, {})
        worker = engine.worker()
        stats: StoreStats = engine.store.stats

        def claim(limit: int, expected: int) -> tuple[int, int]:
            stats.reset()
            on_wire = counter.round_trips
            assert len(worker.claim(limit)) == expected
            return stats.round_trips, counter.round_trips - on_wire

        # psycopg prepares a statement on its 5th run on a connection (one extra exchange,
        # once, which the store does not count): get past it first.
        for _ in range(6):
            claim(1, 1)
        return {"full": claim(1, 1), "short": claim(8, 5)}  # 5 left: the second is short


@pytest.mark.postgres
def test_a_limited_claim_costs_at_most_one_round_trip_more(
    wire: tuple[WireCounter, str],
) -> None:
    counter, url = wire
    costs = {kind: claim_costs(counter, url, make()) for kind, make in KINDS.items()}
    for kind, cost in costs.items():
        assert cost["full"][0] == cost["full"][1], (kind, cost)  # the store counts honestly
        assert cost["short"][0] == cost["short"][1], (kind, cost)
    plain = costs.pop("unlimited")
    for kind, cost in costs.items():
        # The lock travels with the claim: a full limited claim costs what a plain one does;
        # a short one sends its follow-ups together, one round trip more.
        assert cost["full"][0] == plain["full"][0], (kind, cost, plain)
        assert cost["short"][0] == plain["short"][0] + 1, (kind, cost, plain)


# -- two claimers race -----------------------------------------------------------------------


RACES: dict[str, tuple[Callable[[], Workflow], int]] = {
    # (the workflow, how many of its tasks may start at once)
    "task concurrency": (lambda: one_task("race_task", concurrency=3), 3),
    "workflow concurrency": (lambda: one_task("race_wf", workflow=Concurrency(2)), 2),
    # A bucket refilling once in 1000 s holds one token: one start in all.
    "rate limit": (lambda: one_task("race_rate", rate_limit=RateLimit(unique("r"), 0.001)), 1),
}


@pytest.mark.parametrize("kind", list(RACES))
def test_a_limit_holds_when_two_claimers_race(store_url: str, kind: str) -> None:
    """The second claimer's claim runs while the first one's transaction, which took every
    free slot, is still open: it waits for the lock, then counts what the first one claimed
    (a count read before the lock was granted would let it take as many again)."""
    make, allowed = RACES[kind]
    wf = make()
    with Engine(store_url, workflows=[wf]) as first, Engine(store_url, workflows=[wf]) as second:
        claimed = threading.Event()
        took: dict[str, int] = {}
        waited: dict[str, float] = {}

        def claim(engine: Engine, name: str, hold: float) -> None:
            rt = engine.runtime
            started = time.monotonic()
            with rt.store.transaction() as tx:
                claims = rt.repo.claim_tasks(tx, rt.worker_id, rt.registry.claimable(), 5, rt.now())
                took[name] = len(claims)
                if hold:
                    claimed.set()
                    time.sleep(hold)  # its locks and claimed rows stay uncommitted meanwhile
            waited[name] = time.monotonic() - started

        # Nothing is ready yet: this claim only creates the rate limit's bucket (full), as
        # in a system that has run a while.
        claim(first, "before", 0)
        # More than the first claim looks at (4 * 5 + 16 candidates, which it locks on
        # PostgreSQL): the second finds ready tasks nobody holds.
        for _ in range(48):
            first.start(wf, {})
        racer = threading.Thread(target=claim, args=(first, "first", 0.3))
        racer.start()
        assert claimed.wait(10)
        claim(second, "second", 0)
        racer.join(10)
        running = sum(
            1
            for summary in first.list(workflow=wf.name, limit=100)
            for task in first.get(summary.execution_id).tasks.values()
            if task.status == "running"
        )
    assert took == {"before": 0, "first": allowed, "second": 0}
    assert running == allowed
    # It did wait for the first claimer: for its locks on the limited keys (PostgreSQL), for
    # the database's write lock (SQLite's IMMEDIATE transaction).
    assert waited["second"] >= 0.2
