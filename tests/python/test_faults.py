"""Faults with an independent client: paho-mqtt 2.x against the real binary (issue 7).

A QoS 1 or 2 stream from a publisher to a subscriber, both with persistent sessions
(CleanSession=0) that reconnect by themselves, while their connections are cut again and
again at random moments (shutdown of the socket under paho's feet: the broker sees a close
without DISCONNECT, sometimes in the middle of a packet, often in the middle of a QoS 2 flow).
Each reconnect resumes the session [MQTT-3.2.2-2], the broker resends what is unacknowledged
[MQTT-4.4.0-1], and:

- nothing acknowledged to the publisher (PUBACK, or PUBCOMP for QoS 2, which paho reports)
  is lost: every one reaches the subscriber [MQTT-4.3.2-*], [MQTT-4.3.3-*];
- at QoS 2 none reaches the subscribing application twice [MQTT-4.3.3-2] (paho hands a QoS 2
  message to the application at PUBREL, once per packet id, so a second copy would have to
  come as a new PUBLISH: exactly what the broker must not send).

The tests in tests/faults.rs make each of these faults once, deterministically, with the
crate's own codec; these make many of them at random moments with a client the broker's
authors did not write.
"""

import collections
import random
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from paho_client import unique_id

MESSAGES = 200
DEADLINE_SECS = 30.0


class Resilient:
    """A paho client with a persistent session that reconnects on its own, as an application
    would; `cut()` breaks its current connection."""

    def __init__(self, broker, client_id):
        self.client_id = client_id
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                clean_session=False, protocol=mqtt.MQTTv311)
        self.paho.reconnect_delay_set(min_delay=0.01, max_delay=0.05)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.connacks = []  # session present, per CONNACK
        self.messages = []  # (payload, qos, dup) in the order the application got them
        self.acknowledged = set()  # mids paho reported done (PUBACK / PUBCOMP)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_args: self.connected.clear()
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = lambda *_args: self.subscribed.set()
        self.paho.connect("127.0.0.1", broker.port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(5), f"{client_id}: no CONNACK within 5 s"

    def _on_connect(self, _client, _userdata, flags, reason, _properties):
        assert not reason.is_failure, f"CONNACK refused: {reason}"
        with self.lock:
            self.connacks.append(flags.session_present)
        self.connected.set()

    def _on_message(self, _client, _userdata, message):
        with self.lock:
            self.messages.append((message.payload, message.qos, message.dup))

    def _on_publish(self, _client, _userdata, mid, _reason, _properties):
        with self.lock:
            self.acknowledged.add(mid)

    def cut(self):
        """Breaks the live connection (if any) without DISCONNECT; paho then reconnects."""
        sock = self.paho.socket()
        if sock is None or not self.connected.is_set():
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        return True

    def stop(self):
        self.paho.disconnect()
        self.paho.loop_stop()


def chaos(clients, stop, cuts, seed):
    """Cuts a random one of `clients` every 5-40 ms until `stop` is set."""
    rng = random.Random(seed)
    while not stop.is_set():
        time.sleep(rng.uniform(0.005, 0.04))
        victim = rng.choice(clients)
        if victim.cut():
            cuts[victim.client_id] += 1


def wait_until(condition, what):
    deadline = time.monotonic() + DEADLINE_SECS
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_SECS} s: {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("qos", [1, 2])
def test_acknowledged_messages_survive_connections_cut_on_both_sides(broker, qos):
    topic = f"paho/faults/q{qos}"
    subscriber = Resilient(broker, unique_id(f"f-sub{qos}"))
    result, _ = subscriber.paho.subscribe(f"{topic}/#", qos)
    assert result == mqtt.MQTT_ERR_SUCCESS
    # The session keeps the subscription from its SUBACK on, across every cut.
    assert subscriber.subscribed.wait(5), "no SUBACK within 5 s"
    publisher = Resilient(broker, unique_id(f"f-pub{qos}"))

    stop = threading.Event()
    cuts = collections.Counter()
    thread = threading.Thread(target=chaos, args=([publisher, subscriber], stop, cuts, qos))
    thread.start()
    infos = {}
    try:
        for sequence in range(MESSAGES):
            # paho queues a QoS 1/2 message while disconnected and sends it on reconnect;
            # waiting for the connection keeps the stream spread over many connections.
            publisher.connected.wait(5)
            info = publisher.paho.publish(f"{topic}/x", str(sequence).encode(), qos=qos)
            infos[info.mid] = sequence
            time.sleep(0.004)
        wait_until(lambda: len(publisher.acknowledged) >= MESSAGES // 2, "half the stream acknowledged")
    finally:
        stop.set()
        thread.join()

    wait_until(lambda: len(publisher.acknowledged) == len(infos),
               f"every publish acknowledged ({len(publisher.acknowledged)} of {len(infos)})")
    acknowledged = {str(infos[mid]).encode() for mid in publisher.acknowledged}
    wait_until(lambda: acknowledged <= {payload for payload, _, _ in subscriber.messages},
               "every acknowledged message received")
    time.sleep(0.3)  # anything that would come twice comes now
    with subscriber.lock:
        received = list(subscriber.messages)
    publisher.stop()
    subscriber.stop()

    print(f"QoS {qos}: cuts {dict(cuts)}, CONNACKs {len(publisher.connacks)} + {len(subscriber.connacks)}, "
          f"{len(acknowledged)} acknowledged, {len(received)} received")
    assert sum(cuts.values()) >= 10, f"too few connections cut to test anything: {cuts}"
    for client in (publisher, subscriber):
        # Every reconnect resumed the session [MQTT-3.2.2-2].
        assert client.connacks[0] is False and all(client.connacks[1:]), (client.client_id, client.connacks)
        assert len(client.connacks) > 1, f"{client.client_id} was never cut"
    counts = collections.Counter(payload for payload, _, _ in received)
    missing = sorted(int(p) for p in acknowledged - set(counts))
    assert not missing, f"acknowledged but never delivered: {missing[:20]} (cuts {dict(cuts)})"
    assert all(message_qos == qos for _, message_qos, _ in received)
    if qos == 2:
        twice = sorted(int(p) for p, n in counts.items() if n > 1)
        assert not twice, f"QoS 2 delivered more than once [MQTT-4.3.3-2]: {twice[:20]} (cuts {dict(cuts)})"
    # QoS 1 may arrive more than once (at least once, [MQTT-4.3.2-*]): a publisher's resend
    # whose PUBACK was cut off is a new message to the broker.
