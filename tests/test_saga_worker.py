"""``durably worker`` serving sagas: a real worker process serves the participant and resumes
the sagas paused on disk from their replies, with no user code, over RabbitMQ and NATS.

The servers are those of tests/test_brokers.py (``DURABLY_TEST_RABBITMQ_URL``,
``DURABLY_TEST_NATS_URL``); when one is unreachable its cases skip, except under ``CI=true`` (or
``CI=1``), where they fail. Each test has its own participant target and reply topic (the
worker's ``--reply-to``), whose RabbitMQ queues, or NATS consumers and messages, are removed
afterwards. ``broker_from_url`` is tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import codec
from durably.broker import InMemoryBroker, Message, broker_from_url
from durably.context import SagaContext
from durably.exceptions import BrokerError
from durably.nats_broker import NatsBroker, subject_token
from durably.rabbitmq_broker import RabbitMQBroker
from durably.saga_execution import SagaExecution, SagaStatus
from durably.saga_manager import SagaManager
from durably.saga_repository import SagaExecutionRepository

from . import saga_worker_app as app
from .test_brokers import IN_CI, NATS_URL, RABBITMQ_URL, delete_queues, server_problem

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds: the most a test waits for the worker to start or a saga to end
STOP = 10.0  # seconds the worker may take to exit after SIGTERM
NATS_STREAM = "DURABLY"  # the stream of a NatsBroker built from a URL


# -- a worker process --------------------------------------------------------------------------


@pytest.fixture(params=["rabbitmq", "nats"])
def broker_url(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    problem = server_problem(kind)
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: the broker tests must run)", pytrace=False)
        pytest.skip(problem)
    return RABBITMQ_URL if kind == "rabbitmq" else NATS_URL


class WorkerProcess:
    """``python -m durably worker MODULE --db <tmp>/s.db ...``, its stderr in a file."""

    def __init__(self, tmp_path: Path, module: str, *args: str, **env: str) -> None:
        self.db = f"sqlite:///{tmp_path}/s.db"
        self.stderr_path = tmp_path / "worker.err"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DURABLY_")}
        environ.update(env, PYTHONPATH=str(ROOT / "src"))
        command = [sys.executable, "-m", "durably", "worker", module, "--db", self.db, *args]
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=stderr
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_started(self) -> None:
        deadline = time.monotonic() + WAIT
        while "worker serving" not in self.stderr:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{self.stderr}")
            time.sleep(0.05)

    def terminate(self) -> int:
        """SIGTERM, and the exit status (killed after STOP seconds: the test then fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the worker did not exit within {STOP:g} s of SIGTERM:\n{self.stderr}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SagaAppWorker(WorkerProcess):
    """A worker of tests.saga_worker_app with a participant target and reply topic of its own."""

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        self.broker_url = broker_url
        self.target = f"saga-worker-inventory-{uuid.uuid4().hex[:12]}"
        self.reply_to = f"saga-worker-replies-{uuid.uuid4().hex[:12]}"
        super().__init__(
            tmp_path,
            "tests.saga_worker_app",
            *("--broker", broker_url, "--reply-to", self.reply_to),
            SAGA_APP_BROKER_URL=broker_url,
            SAGA_APP_TARGET=self.target,
        )


@pytest.fixture
def worker(tmp_path: Path, broker_url: str) -> Iterator[SagaAppWorker]:
    existed = asyncio.run(nats_stream_exists()) if broker_url == NATS_URL else True
    process = SagaAppWorker(tmp_path, broker_url)
    try:
        yield process
    finally:
        process.kill()
        topics = {process.target, process.reply_to}
        if broker_url == RABBITMQ_URL:
            asyncio.run(delete_queues(topics))
        else:
            asyncio.run(clean_nats(topics, delete_stream=not existed))


async def nats_stream_exists() -> bool:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().stream_info(NATS_STREAM)
    except NotFoundError:
        return False
    finally:
        await nc.close()
    return True


async def clean_nats(topics: set[str], *, delete_stream: bool) -> None:
    """Delete the stream these tests created, or else the topics' consumers and messages."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        if delete_stream:
            await js.delete_stream(NATS_STREAM)
            return
        for topic in topics:
            token = subject_token(topic)
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(NATS_STREAM, token)
            await js.purge_stream(NATS_STREAM, subject=f"{NATS_STREAM.lower()}.{token}")
    except NotFoundError:
        pass  # nothing was created
    finally:
        await nc.close()


# -- the worker resumes what another process started -------------------------------------------


def start_and_wait(worker: SagaAppWorker, **context: Any) -> SagaExecution:
    """Start ``app.saga`` in this process, paused on disk at its remote step, and wait until
    the worker has brought it to an end."""
    repo = SagaExecutionRepository(worker.db)

    async def main() -> SagaExecution:
        broker = broker_from_url(worker.broker_url)
        manager = SagaManager(storage=repo, broker_pool=broker, reply_to=worker.reply_to)
        try:
            execution_id = await manager.run(
                definition=app.saga,
                context=SagaContext(target=worker.target, **context),
                pause_on_disk=True,
                return_execution=False,
            )
        finally:
            await broker.close()  # nothing here waits for the reply: the worker gets it
        assert isinstance(execution_id, uuid.UUID)
        deadline = time.monotonic() + WAIT
        while (execution := await repo.load(execution_id)).status not in (
            SagaStatus.Finished,
            SagaStatus.Errored,
        ):
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                pytest.fail(f"saga still {execution.status.value}; worker:\n{worker.stderr}")
            await asyncio.sleep(0.05)
        return execution

    try:
        return asyncio.run(main())
    finally:
        repo.close()


@pytest.mark.broker
@pytest.mark.slow
def test_worker_serves_the_participant_and_resumes_the_paused_saga(
    worker: SagaAppWorker,
) -> None:
    worker.wait_started()
    execution = start_and_wait(worker, order_id=7, qty=2)
    assert execution.status is SagaStatus.Finished, worker.stderr
    final = execution.context.to_dict()
    assert final["validated"] is True
    assert final["reservation"] == "R-7"  # from the participant, applied by the worker
    assert final["shipped"] is True  # the step after the reply, run by the worker
    assert "compensated" not in final
    assert worker.terminate() == 0, worker.stderr
    assert "worker stopped" in worker.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_the_worker_answers_a_request_sent_again_from_its_inbox(worker: SagaAppWorker) -> None:
    worker.wait_started()
    execution = start_and_wait(worker, order_id=9, qty=2)
    assert execution.status is SagaStatus.Finished, worker.stderr
    replies: list[Message] = []

    async def main() -> None:
        broker = broker_from_url(worker.broker_url)
        topic = f"{worker.reply_to}-again"

        async def on_reply(message: Message) -> None:
            replies.append(message)

        try:
            subscription = await broker.subscribe(topic, on_reply, durable=False)
            # The same request again (a resumed saga, a redelivery), now with content the
            # handler would reject: the inbox answers as the first time, the handler is not run.
            headers = {
                "saga": str(execution.uuid),
                "step": "1",
                "reply_to": topic,
                "idempotency_key": f"{execution.uuid}:1:execute",
                "token": "t",
            }
            body = codec.dumps_value({"order_id": 9, "qty": 99})
            await broker.publish(Message(worker.target, body, headers))
            deadline = time.monotonic() + WAIT
            while not replies and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await subscription.close()
        finally:
            await broker.close()

    asyncio.run(main())
    [reply] = replies
    assert reply.headers["status"] == "200", worker.stderr
    assert codec.loads_value(reply.body) == {"reservation": "R-9"}
    assert worker.terminate() == 0, worker.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_a_rejected_request_compensates_the_saga_in_the_worker(worker: SagaAppWorker) -> None:
    worker.wait_started()
    execution = start_and_wait(worker, order_id=8, qty=99)  # the participant: out of stock
    assert execution.status is SagaStatus.Errored, worker.stderr
    final = execution.context.to_dict()
    assert final["compensated"] is True  # the local step before it was undone
    assert "reservation" not in final
    assert "shipped" not in final
    assert worker.terminate() == 0, worker.stderr
    assert "worker stopped" in worker.stderr


@pytest.mark.slow
def test_a_saga_only_module_is_served_and_warned_about_the_in_memory_broker(
    tmp_path: Path,
) -> None:
    process = WorkerProcess(tmp_path, "tests.saga_crash_app")  # a saga, an InMemoryBroker
    try:
        process.wait_started()
        assert process.terminate() == 0, process.stderr
    finally:
        process.kill()
    lines = process.stderr.splitlines()
    warnings = [line for line in lines if "network broker" in line]
    assert len(warnings) == 1, lines
    assert "InMemoryBroker lives in one process" in warnings[0]
    started = next(line for line in lines if "worker serving" in line)
    assert "0 workflow(s)" in started
    assert "1 saga(s)" in started
    assert lines[-1] == "worker stopped"


def test_several_module_brokers_need_the_broker_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from durably.cli import cli

    (tmp_path / "two_brokers_app.py").write_text(
        "from durably import InMemoryBroker, Saga\n"
        "first, second = InMemoryBroker(), InMemoryBroker()\n"
        "def step(ctx): pass\n"
        "saga = Saga('two_brokers').local_step(step).commit()\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        result = CliRunner().invoke(
            cli, ["worker", "two_brokers_app", "--db", f"sqlite:///{tmp_path}/s.db"]
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("two_brokers_app", None)
    assert result.exit_code == 1
    assert "2 brokers: pass --broker URL" in result.stderr
    assert "Traceback" not in result.output


def test_a_bad_broker_option_is_a_one_line_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from durably.cli import cli

    result = CliRunner().invoke(
        cli,
        ["worker", "tests.saga_worker_app", "--db", f"sqlite:///{tmp_path}/s.db"],
        env={"DURABLY_BROKER_URL": "redis://user:s3cret@localhost"},
    )
    assert result.exit_code == 1
    assert "unsupported broker URL (scheme 'redis')" in result.stderr
    assert "s3cret" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_broker_stops_the_worker_at_start_with_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from durably.cli import cli

    db, url = f"sqlite:///{tmp_path}/s.db", "amqp://guest:s3cret@127.0.0.1:1/"
    result = CliRunner().invoke(
        cli, ["worker", "tests.saga_worker_app", "--db", db, "--broker", url]
    )
    assert result.exit_code == 1
    assert "RabbitMQ at amqp://guest@127.0.0.1:1/: cannot connect" in result.stderr
    assert "s3cret" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


# -- broker_from_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", RabbitMQBroker),
        ("amqps://user@rabbit.example/vhost", RabbitMQBroker),
        ("AMQP://127.0.0.1", RabbitMQBroker),
        ("nats://127.0.0.1:4222", NatsBroker),
        ("tls://user:pw@nats.example:4222", NatsBroker),
        ("memory://", InMemoryBroker),
    ],
)
def test_broker_from_url_picks_the_broker_by_scheme(url: str, cls: type) -> None:
    broker = broker_from_url(url)
    assert type(broker) is cls
    if not isinstance(broker, InMemoryBroker):
        assert isinstance(broker, RabbitMQBroker | NatsBroker)
        assert broker.url == url


def test_broker_from_url_keeps_several_nats_servers() -> None:
    broker = broker_from_url("nats://a:4222,nats://b:4222")
    assert isinstance(broker, NatsBroker)
    assert broker.servers == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("redis://user:s3cret@localhost:6379", "scheme 'redis'"),
        ("http://127.0.0.1:5672", "scheme 'http'"),
        ("guest:s3cret@127.0.0.1:5672", "no scheme"),
        ("", "non-empty"),
        (None, "non-empty"),
    ],
)
def test_broker_from_url_refuses_other_urls_naming_the_schemes(url: Any, found: str) -> None:
    with pytest.raises(BrokerError) as info:
        broker_from_url(url)
    message = str(info.value)
    assert found in message
    for scheme in ("amqp://", "amqps://", "nats://", "tls://", "memory://"):
        assert scheme in message
    assert "s3cret" not in message
