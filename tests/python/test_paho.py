"""The real ringmq binary against paho-mqtt, a client we did not write: connect, QoS 0/1/2
round trips, retained messages, a will, an MQTT 3.1 ("MQIsdp") client, and a persistent
session. Each test gets its own broker (the `broker` fixture in conftest.py)."""

import subprocess
import sys
import textwrap

import paho.mqtt.client as mqtt
import pytest

from paho_client import WAIT_SECS, Client, unique_id


def test_connect_is_accepted_without_a_session_present(broker):
    # [MQTT-3.2.0-1] CONNACK first (Client waits for it); [MQTT-3.2.2-1] clean session:
    # session present is 0.
    client = Client(broker)
    assert client.session_present is False
    client.disconnect()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_round_trip_at_each_qos(broker, qos):
    subscriber = Client(broker)
    subscriber.subscribe("paho/qos/#", 2)
    publisher = Client(broker)
    publisher.publish(f"paho/qos/{qos}", f"at qos {qos}".encode(), qos=qos)
    message = subscriber.next_message()
    assert message.topic == f"paho/qos/{qos}"
    assert message.payload == f"at qos {qos}".encode()
    # [MQTT-3.8.4-6] min(published, granted) = the published QoS.
    assert message.qos == qos
    assert message.retain is False  # [MQTT-3.3.1-12]
    publisher.disconnect()
    subscriber.disconnect()


def test_retained_flag_store_and_delete(broker):
    existing = Client(broker)
    existing.subscribe("paho/retained/#", 1)
    publisher = Client(broker)
    publisher.publish("paho/retained/a", b"kept", qos=1, retain=True)

    live = existing.next_message()
    assert (live.topic, live.payload) == ("paho/retained/a", b"kept")
    assert live.retain is False  # [MQTT-3.3.1-9] established subscription: RETAIN=0

    late = Client(broker)
    late.subscribe("paho/retained/+", 1)
    replay = late.next_message()
    # [MQTT-3.3.1-6] a new subscription gets it; [MQTT-3.3.1-8] with RETAIN=1.
    assert (replay.topic, replay.payload, replay.retain) == ("paho/retained/a", b"kept", True)
    late.disconnect()

    # [MQTT-3.3.1-10] an empty retained message is delivered as normal and deletes.
    publisher.publish("paho/retained/a", b"", qos=1, retain=True)
    deletion = existing.next_message()
    assert (deletion.payload, deletion.retain) == (b"", False)
    after = Client(broker)
    after.subscribe("paho/retained/#", 1)
    publisher.publish("paho/retained/marker", b"marker", qos=1)
    # [MQTT-3.3.1-11] nothing stored, so the first message is the later ordinary one.
    assert after.next_message().topic == "paho/retained/marker"
    for client in (after, publisher, existing):
        client.disconnect()


# A paho client with a will, in a process of its own that the test kills (SIGKILL): the
# socket closes without DISCONNECT, as when a device loses power.
WILL_CLIENT = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    port, client_id = int(sys.argv[1]), sys.argv[2]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.will_set("paho/will/" + client_id, b"gone", qos=1)
    client.on_connect = lambda *args: print("connected", flush=True)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_forever()
""")


def test_will_of_a_killed_client_is_published(broker):
    watcher = Client(broker)
    watcher.subscribe("paho/will/#", 1)

    # A polite client's will is discarded by DISCONNECT [MQTT-3.1.2-10] [MQTT-3.14.4-3].
    polite = Client(broker, will=("paho/will/polite", b"must not appear", 1))
    polite.disconnect()

    client_id = unique_id("will")
    child = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, str(broker.port), client_id],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
    finally:
        child.kill()
        child.wait(timeout=WAIT_SECS)
    # [MQTT-3.1.2-8] the will is published when the connection closes without DISCONNECT;
    # it is the first the watcher sees, so the polite client's never came.
    will = watcher.next_message()
    assert (will.topic, will.payload, will.qos) == (f"paho/will/{client_id}", b"gone", 1)
    watcher.disconnect()


def test_mqtt_3_1_client_is_accepted(broker):
    # MQTT 3.1: protocol name "MQIsdp", level 3. [MQTT-3.1.2-1] lets a 3.1.1 server accept
    # another protocol name; ringmq does, for 3.1 clients.
    old = Client(broker, protocol=mqtt.MQTTv31)
    old.subscribe("paho/v31/#", 1)
    new = Client(broker)
    new.publish("paho/v31/from-311", b"to the 3.1 client", qos=1)
    assert old.next_message().payload == b"to the 3.1 client"
    new.subscribe("paho/v311/#", 1)
    old.publish("paho/v311/from-31", b"from the 3.1 client", qos=2)
    message = new.next_message()
    assert (message.payload, message.qos) == (b"from the 3.1 client", 1)
    old.disconnect()
    new.disconnect()


def test_persistent_session_gets_queued_messages(broker):
    client_id = unique_id("persist")
    subscriber = Client(broker, client_id=client_id, clean_session=False)
    assert subscriber.session_present is False
    subscriber.subscribe("paho/persistent/#", 1)
    subscriber.disconnect()

    publisher = Client(broker)
    for sequence in range(10):
        publisher.publish("paho/persistent/x", str(sequence).encode(), qos=1)

    # [MQTT-3.2.2-2] session present; [MQTT-3.1.2-5] the QoS 1 messages were kept for it,
    # and come in order [MQTT-4.6.0-6].
    subscriber = Client(broker, client_id=client_id, clean_session=False)
    assert subscriber.session_present is True
    received = [subscriber.next_message() for _ in range(10)]
    assert [message.payload for message in received] == [str(n).encode() for n in range(10)]
    assert all(message.qos == 1 for message in received)
    subscriber.disconnect()
    publisher.disconnect()
