"""pytest fixtures that run the real ringmq binary for the paho-mqtt tests.

The binary is $RINGMQ_BIN (scripts/test.sh builds it and sets that), else target/debug/ringmq
of this checkout. Each test that asks for `broker` gets its own process on a free loopback
port, started and waited for until it answers an MQTT CONNECT (no fixed sleep), and killed
by PID afterwards; a failing test shows the tail of the broker's log.
"""

import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 10.0


def ringmq_binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("RINGMQ_BIN") or REPO / "target" / "debug" / "ringmq")
    if not path.is_file():
        pytest.fail(f"no ringmq binary at {path}: run `cargo build` or set RINGMQ_BIN", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
        self.log = tempfile.TemporaryFile()
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(ringmq_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
             "--log-level", "info", "--ring-entries", "1024", "--recv-buffers", "256", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            env={key: value for key, value in os.environ.items() if key != "RUST_LOG"},
        )
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not answers_connect(self.port):
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
