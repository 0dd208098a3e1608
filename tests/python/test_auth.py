"""Password file, ACL and SIGHUP reload with paho-mqtt (2.x), a client we did not write.

Each test writes its files with `ringmq passwd` (the binary under test) into a temporary
directory and starts its own broker with them (conftest.Broker). Every wait is bounded.
"""

import queue
import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, ringmq_binary
from paho_client import WAIT_SECS, unique_id


def passwd(*args):
    subprocess.run([str(ringmq_binary()), "passwd", *args], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)


class Session:
    """A paho client that connects with a user name and password and records what it gets."""

    def __init__(self, broker, username, password):
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.published = queue.Queue()
        self.messages = queue.Queue()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id(username),
                                protocol=mqtt.MQTTv311)
        self.paho.username_pw_set(username, password)
        self.paho.reconnect_delay_set(min_delay=60, max_delay=60)
        self.paho.on_connect = lambda c, u, flags, reason, props: self.connack.put(reason)
        self.paho.on_subscribe = lambda c, u, mid, reasons, props: self.subacks.put(reasons)
        self.paho.on_publish = lambda c, u, mid, reason, props: self.published.put(mid)
        self.paho.on_message = lambda c, u, message: self.messages.put(
            (message.topic, message.payload))
        self.paho.connect("127.0.0.1", broker.port, keepalive=30)
        self.paho.loop_start()
        self.reason = self.connack.get(timeout=WAIT_SECS)

    def subscribe(self, topic, qos=1):
        self.paho.subscribe(topic, qos)
        return [reason.value for reason in self.subacks.get(timeout=WAIT_SECS)]

    def publish_acknowledged(self, topic, payload, qos=1):
        info = self.paho.publish(topic, payload, qos=qos)
        assert self.published.get(timeout=WAIT_SECS) == info.mid

    def close(self):
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def files(tmp_path):
    passwords = tmp_path / "passwd"
    acl = tmp_path / "acl"
    passwd("-c", "-b", str(passwords), "reader", "r-pass")
    passwd("-b", str(passwords), "writer", "w-pass")
    acl.write_text("user reader\ntopic read public/#\n"
                   "user writer\ntopic write public/#\ntopic write secret/#\n")
    return passwords, acl


@pytest.fixture
def auth_broker(request, files):
    passwords, acl = files
    running = Broker(["--password-file", str(passwords), "--acl-file", str(acl)])
    yield running
    running.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"---- ringmq log tail ----\n{running.log_tail()}")
    running.log.close()


def test_wrong_password_is_refused_as_bad_user_name_or_password(auth_broker):
    # [MQTT-3.2.2-5]: CONNACK 0x04, which paho maps to "Bad user name or password".
    wrong = Session(auth_broker, "reader", "nope")
    assert wrong.reason.is_failure
    assert wrong.reason == "Bad user name or password", str(wrong.reason)
    wrong.close()
    unknown = Session(auth_broker, "nobody", "r-pass")
    assert unknown.reason == "Bad user name or password", str(unknown.reason)
    unknown.close()
    right = Session(auth_broker, "reader", "r-pass")
    assert not right.reason.is_failure, str(right.reason)
    right.close()


def test_acl_denies_publish_and_subscribe_and_filters_a_wildcard(auth_broker):
    reader = Session(auth_broker, "reader", "r-pass")
    writer = Session(auth_broker, "writer", "w-pass")
    # Subscribe denied: 0x80 for the filter nothing under which the reader may read.
    assert reader.subscribe("secret/#") == [0x80]
    # A wildcard is granted; what the reader may not read is not delivered.
    assert reader.subscribe("#") == [1]
    writer.publish_acknowledged("secret/plan", b"s")
    # Publish denied: acknowledged at QoS 1 (MQTT-3.3.5-2), never delivered.
    reader.publish_acknowledged("public/forged", b"f")
    writer.publish_acknowledged("public/news", b"n")
    assert reader.messages.get(timeout=WAIT_SECS) == ("public/news", b"n")
    with pytest.raises(queue.Empty):
        reader.messages.get(timeout=0.3)
    reader.close()
    writer.close()


def test_sighup_reload_changes_a_password_and_keeps_connections(auth_broker, files):
    passwords, _ = files
    listener = Session(auth_broker, "reader", "r-pass")
    assert listener.subscribe("public/#") == [1]
    passwd("-b", str(passwords), "writer", "rotated")
    auth_broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        writer = Session(auth_broker, "writer", "rotated")
        if not writer.reason.is_failure:
            break
        writer.close()
        assert time.monotonic() < deadline, "the new password was never accepted"
        time.sleep(0.05)
    old = Session(auth_broker, "writer", "w-pass")
    assert old.reason == "Bad user name or password", str(old.reason)
    old.close()
    writer.publish_acknowledged("public/after", b"a")
    assert listener.messages.get(timeout=WAIT_SECS) == ("public/after", b"a")
    listener.close()
    writer.close()
    assert "reloaded: 2 users in the password file" in auth_broker.log_tail()


def test_sighup_reload_disconnects_a_deleted_user_and_keeps_the_others(auth_broker, files):
    # As Mosquitto does on a reload: a connected client whose user was deleted is disconnected
    # (paho sees the connection end); an unchanged user stays connected and served.
    passwords, _ = files
    reader = Session(auth_broker, "reader", "r-pass")
    writer = Session(auth_broker, "writer", "w-pass")
    assert not writer.reason.is_failure, str(writer.reason)
    lost = queue.Queue()
    writer.paho.on_disconnect = lambda c, u, flags, reason, props: lost.put(reason)
    passwd("-D", str(passwords), "writer")
    auth_broker.process.send_signal(signal.SIGHUP)
    reason = lost.get(timeout=WAIT_SECS)
    assert reason.is_failure, f"the deleted user's connection ended cleanly? {reason}"
    assert reader.paho.is_connected()
    assert reader.subscribe("public/#") == [1], "the unchanged user is still served"
    again = Session(auth_broker, "writer", "w-pass")
    assert again.reason == "Bad user name or password", str(again.reason)
    again.close()
    reader.close()
    writer.paho.loop_stop()
