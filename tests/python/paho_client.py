"""paho-mqtt (2.x) with bounded waits: a connected client whose callbacks feed queues.

Every wait has a timeout and fails the test when it passes, so a hung broker fails a test
instead of hanging it.
"""

import itertools
import os
import queue
import threading

import paho.mqtt.client as mqtt

WAIT_SECS = 5.0
_ids = itertools.count()


def unique_id(prefix: str) -> str:
    """A client id unique in this run, at most 23 characters (MQTT 3.1's limit)."""
    return f"{prefix[:10]}-{os.getpid() % 100000}-{next(_ids)}"


class Client:
    """A paho client connected to `broker` (CONNACK received) with its network loop running."""

    def __init__(self, broker, client_id=None, clean_session=True, protocol=mqtt.MQTTv311,
                 will=None):
        self.client_id = client_id or unique_id("paho")
        self.messages = queue.Queue()
        self._connack = queue.Queue()
        self._subacks = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                clean_session=clean_session, protocol=protocol)
        # Never reconnect behind the test's back.
        self.paho.reconnect_delay_set(min_delay=60, max_delay=60)
        if will is not None:
            topic, payload, qos = will
            self.paho.will_set(topic, payload, qos=qos)
        self.paho.on_connect = self._on_connect
        self.paho.on_message = lambda _client, _userdata, message: self.messages.put(message)
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_disconnect = lambda *_args: self.closed.set()
        self.paho.connect("127.0.0.1", broker.port, keepalive=30)
        self.paho.loop_start()
        try:
            flags, reason = self._connack.get(timeout=WAIT_SECS)
        except queue.Empty:
            self.paho.loop_stop()
            raise AssertionError(f"no CONNACK for {self.client_id} within {WAIT_SECS} s") from None
        assert not reason.is_failure, f"CONNACK refused: {reason}"
        self.session_present = flags.session_present

    def _on_connect(self, _client, _userdata, flags, reason, _properties):
        self._connack.put((flags, reason))

    def _on_subscribe(self, _client, _userdata, mid, reasons, _properties):
        with self._lock:
            waiter = self._subacks.setdefault(mid, queue.Queue())
        waiter.put(reasons)

    def subscribe(self, topic_filter: str, qos: int):
        """Subscribes and checks SUBACK grants `qos` ([MQTT-3.8.4-1], [MQTT-3.9.3-1])."""
        result, mid = self.paho.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        with self._lock:
            waiter = self._subacks.setdefault(mid, queue.Queue())
        try:
            reasons = waiter.get(timeout=WAIT_SECS)
        except queue.Empty:
            raise AssertionError(f"no SUBACK for {topic_filter} within {WAIT_SECS} s") from None
        assert [reason.value for reason in reasons] == [qos], f"SUBACK for {topic_filter}: {reasons}"

    def publish(self, topic: str, payload, qos=0, retain=False):
        """Publishes and waits until paho reports it done (PUBACK / PUBCOMP for QoS 1 / 2)."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT_SECS)
        assert info.is_published(), f"{topic} QoS {qos} not acknowledged within {WAIT_SECS} s"

    def next_message(self):
        try:
            return self.messages.get(timeout=WAIT_SECS)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {WAIT_SECS} s") from None

    def disconnect(self):
        """Sends DISCONNECT and stops the network loop."""
        self.paho.disconnect()
        assert self.closed.wait(WAIT_SECS), "DISCONNECT not completed"
        self.paho.loop_stop()
