"""Stores that cannot open or lose their server (SPEC §5): no leaked file descriptor, and a dead
PostgreSQL server reported as unreachable rather than as a busy pool."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from durably import MigrationError, StoreConnectionError
from durably.backends import open_store
from durably.sqlite_store import SQLiteStore
from durably.store import Store

from .conftest import wait_until


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- SQLite: a failed open closes its connection ---------------------------------------------


def not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "junk.db"
    path.write_text("this is not an SQLite database " * 20)
    return path


def wal_cannot_be_created(tmp_path: Path) -> Path:
    # What a read-only directory does to a non-root user, and root cannot be refused: the
    # database opens, then PRAGMA journal_mode=WAL cannot create its -wal file.
    path = tmp_path / "t.db"
    sqlite3.connect(path).close()
    (tmp_path / "t.db-wal").mkdir()
    return path


def a_directory(tmp_path: Path) -> Path:
    path = tmp_path / "dir.db"
    path.mkdir()
    return path


@pytest.mark.parametrize("make", [not_a_database, wal_cannot_be_created, a_directory])
def test_a_failed_sqlite_open_leaks_no_file_descriptor(
    make: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = make(tmp_path)
    before = open_fds()
    for _ in range(3):
        # The error is kept alive (as a caller logging it would): its traceback must not be
        # what holds the connection, and so the descriptor, open.
        with pytest.raises(StoreConnectionError, match="cannot open SQLite database") as info:
            SQLiteStore(str(path))
        assert open_fds() == before, f"{open_fds() - before} descriptor(s) leaked: {info.value}"


def test_a_failed_migration_closes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contexts (something_else INTEGER)")  # not our schema
    conn.close()
    before = open_fds()
    with pytest.raises(MigrationError, match=r"foreign\.db") as info:
        open_store(f"sqlite:///{path}")
    assert open_fds() == before, f"{open_fds() - before} descriptor(s) leaked: {info.value}"


# -- PostgreSQL: a dead server is unreachable, a full pool is busy ----------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server until cut(); start() listens on that port again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        self._listener.settimeout(0.05)  # so that the accept loop sees cut() soon
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept, self._listener)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # cut
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """The server vanishes: established connections drop, new ones are refused."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_url)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield tcp
    tcp.cut()


def through(proxy: TcpProxy, postgres_url: str) -> str:
    """``postgres_url`` via the proxy, with a password that must never be shown."""
    parts = urlsplit(postgres_url)
    return parts._replace(netloc=f"{parts.username}:sekrit@127.0.0.1:{proxy.port}").geturl()


def open_fast(url: str, **options: object) -> Store:
    # Short waits keep the test fast: a refused connection fails at once, the pool waits 1 s.
    return open_store(url, migrate=False, timeout=1, connect_timeout=1, **options)


@pytest.mark.postgres
def test_a_dead_server_is_unreachable_not_a_busy_pool(proxy: TcpProxy, postgres_url: str) -> None:
    store = open_fast(through(proxy, postgres_url), max_size=2)
    try:
        assert store.schema_version() > 0
        proxy.cut()
        messages = []
        for _ in range(2):
            with pytest.raises(StoreConnectionError) as info:
                store.schema_version()
            messages.append(str(info.value))
        last = messages[-1]
        assert "PostgreSQL is unreachable" in last
        assert f"host=127.0.0.1 port={proxy.port}" in last
        assert "last connect error" in last
        assert "refused" in last.lower()  # the driver's own words
        for message in messages:
            assert "sekrit" not in message
            assert "busy" not in message
            assert "free within" not in message

        # The server comes back: the pool reconnects, and a full pool is busy again, not
        # unreachable (the last connect error was forgotten on the first success).
        proxy.start()
        wait_until(lambda: _works(store), "the pool to reconnect", timeout=30)
        with (
            store.transaction(),
            store.transaction(),
            pytest.raises(StoreConnectionError, match="all 2 PostgreSQL connections"),
        ):
            store.schema_version()
    finally:
        store.close()


def _works(store: Store) -> bool:
    try:
        store.schema_version()
    except StoreConnectionError:
        return False
    return True


@pytest.mark.postgres
def test_a_server_dead_at_open_is_a_quick_clear_error(proxy: TcpProxy, postgres_url: str) -> None:
    url = through(proxy, postgres_url)
    proxy.cut()
    with pytest.raises(StoreConnectionError) as info:
        open_fast(url)
    message = str(info.value)
    assert f"cannot connect to PostgreSQL (host=127.0.0.1 port={proxy.port}" in message
    assert "refused" in message.lower()
    assert "sekrit" not in message


@pytest.mark.postgres
def test_a_pool_whose_connections_are_all_busy_says_so(postgres_url: str) -> None:
    store = open_fast(postgres_url, max_size=1)
    try:
        with store.transaction(), pytest.raises(StoreConnectionError) as info:
            store.schema_version()
        message = str(info.value)
        assert "all 1 PostgreSQL connections" in message
        assert "are busy" in message
        assert "raise max_size" in message
        assert "unreachable" not in message
        assert store.schema_version() > 0  # the connection came back to the pool
    finally:
        store.close()


# -- PostgreSQL: a deadlock is a conflict to retry, not a failure ----------------------------


@pytest.mark.postgres
def test_a_deadlock_is_a_store_conflict_error(postgres_url: str) -> None:
    from durably import Engine, StoreConflictError, Workflow

    wf = Workflow("faults_deadlock")
    wf.task(name="only")(lambda ctx: None)
    with Engine(postgres_url, workflows=[wf]) as engine:
        first, second = str(engine.start(wf, {})), str(engine.start(wf, {}))
        both_hold_one = threading.Barrier(2)
        outcomes: list[BaseException | None] = []

        def lock(a: str, b: str) -> None:
            try:
                with engine.store.transaction() as tx:
                    # The lock at once (lock_execution would send it with what follows).
                    tx.fetch_one("lock_execution", {"id": a})
                    both_hold_one.wait(timeout=10)
                    tx.fetch_one("lock_execution", {"id": b})  # each waits for the other
                outcomes.append(None)
            except BaseException as exc:
                outcomes.append(exc)

        threads = [
            threading.Thread(target=lock, args=(first, second)),
            threading.Thread(target=lock, args=(second, first)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    errors = [exc for exc in outcomes if exc is not None]
    assert len(outcomes) == 2
    assert len(errors) == 1, outcomes  # PostgreSQL aborted one to let the other through
    assert isinstance(errors[0], StoreConflictError)
    assert "deadlock" in str(errors[0])


def test_cancel_runs_again_after_a_conflict(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durably import Engine, StoreConflictError, Workflow, event

    wf = Workflow("faults_cancel_conflict")
    wf.task(name="later", wait=event("go"))(lambda ctx: None)
    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = engine.start(wf, {})
        real = engine._cancel
        calls: list[str] = []

        def conflict_once(key: str) -> list[str]:
            calls.append(key)
            if len(calls) == 1:
                raise StoreConflictError("query 'cancel_tasks' failed: deadlock detected")
            return real(key)

        monkeypatch.setattr(engine, "_cancel", conflict_once)
        result = engine.cancel(execution_id)
    assert len(calls) == 2
    assert result.status == "cancelled"
