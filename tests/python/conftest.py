"""pytest fixtures that run the real ringmq binary for the paho-mqtt tests.

The binary is $RINGMQ_BIN (scripts/test.sh builds it and sets that), else target/debug/ringmq
of this checkout. Each test that asks for `broker` gets its own process on a free loopback
port, started and waited for until it answers an MQTT CONNECT (no fixed sleep), and killed
by PID afterwards; a failing test shows the tail of the broker's log.

Ports: a port picked as free can be taken by another process (other tests, other brokers on
this machine) before the broker binds it. The broker then refuses to start (it will not join
another listener's SO_REUSEPORT group) and another port is tried. Until the broker has logged
that it holds the port, a CONNACK on that port may come from someone else's broker, so
readiness waits for that log line first, then for the CONNACK.
"""

import os
import pathlib
import re
import socket
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 10.0
# Start attempts when the picked port turns out to be taken (the broker exits at once).
START_ATTEMPTS = 3


def ringmq_binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("RINGMQ_BIN") or REPO / "target" / "debug" / "ringmq")
    if not path.is_file():
        pytest.fail(f"no ringmq binary at {path}: run `cargo build` or set RINGMQ_BIN", pytrace=False)
    return path


_GIVEN_PORTS = set()


def free_port() -> int:
    """A loopback port the kernel just handed out and this test process has not given before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def holds_port(log_text: str, port: int) -> bool:
    """True when the broker's log says its listeners are bound, on `port` among them (the
    runtime's "starting" line lists the bound addresses, text or JSON format)."""
    bound = re.compile(r"127\.0\.0\.1:" + str(port) + r"\b")
    return any("starting" in line and "addrs" in line and bound.search(line)
               for line in log_text.splitlines())


# CONNECT: MQTT 3.1.1, clean session, keepalive 10, client id "ready".
READY_CONNECT = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 10, 0, 5]) + b"ready"
DISCONNECT = bytes([0xE0, 0])


def answers_connect(port: int) -> bool:
    """True when the broker on `port` answers a CONNECT with CONNACK 0."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(READY_CONNECT)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            sock.sendall(DISCONNECT)
            return connack == bytes([0x20, 2, 0, 0])
    except OSError:
        return False


class Broker:
    """A running ringmq process; `port` is where it listens on 127.0.0.1."""

    def __init__(self, flags=()):
        for attempt in range(START_ATTEMPTS):
            self.log = tempfile.TemporaryFile()
            self.port = free_port()
            self.process = subprocess.Popen(
                [str(ringmq_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "info", "--ring-entries", "1024", "--recv-buffers", "256", *flags],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                env={key: value for key, value in os.environ.items() if key != "RUST_LOG"},
            )
            try:
                self._wait_until_ready()
                return
            except RuntimeError as error:
                taken = "listening on 127.0.0.1:" + str(self.port) in str(error)
                if not taken or "Address already in use" not in str(error) or attempt + 1 == START_ATTEMPTS:
                    raise
                self.log.close()

    def _wait_until_ready(self):
        """Waits until this broker holds its port (its log says so), then answers CONNECT."""
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not (holds_port(self.log_tail(limit=1 << 20), self.port) and answers_connect(self.port)):
            if self.process.poll() is not None:
                raise RuntimeError(f"ringmq exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ringmq did not answer CONNECT in {START_TIMEOUT_SECS} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, limit=16 * 1024) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-limit:]

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL to this child's PID
        self.process.wait(timeout=10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so the fixture knows if the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "report_" + report.when, report)


@pytest.fixture
def broker(request):
    """A broker of this test's own, with default settings."""
    running = Broker()
    yield running
    running.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"---- ringmq (port {running.port}) log tail ----\n{running.log_tail()}")
    running.log.close()
