"""ringmq's TLS, WebSocket and WSS listeners against paho-mqtt (a client we did not write):
a publish/subscribe round trip on each, MQTT packets larger than one WebSocket frame's
worth of TCP segment, a client certificate, and a refused untrusted CA. Certificates are made
with the openssl command line (scripts/test.sh installs it) in a directory of the module's own.
"""

import pathlib
import queue
import ssl
import subprocess

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, free_port
from paho_client import WAIT_SECS, unique_id


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}", "-days", "2",
            cwd=directory)


def make_leaf(directory, ca, name, common_name, san):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}",
            cwd=directory)
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", extensions.name,
            cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "rogue")
    make_leaf(directory, "ca", "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_leaf(directory, "ca", "client", "alice", None)
    return directory


@pytest.fixture
def layered(pki, request):
    """A broker with TLS, WebSocket and WSS listeners; client certificates optional."""
    # A port picked as free may be taken by another process before the broker binds it: the
    # broker then exits at once, and another set of ports is tried (3 attempts).
    for attempt in range(3):
        ports = {"tls": free_port(), "ws": free_port(), "wss": free_port()}
        flags = ["--tls-bind", f"127.0.0.1:{ports['tls']}", "--ws-bind",
                 f"127.0.0.1:{ports['ws']}", "--wss-bind", f"127.0.0.1:{ports['wss']}",
                 "--certfile", str(pki / "server.pem"), "--keyfile", str(pki / "server.key"),
                 "--cafile", str(pki / "ca.pem")]
        try:
            running = Broker(flags)
            break
        except RuntimeError as error:
            if "Address already in use" not in str(error) or attempt == 2:
                raise
    running.ports = ports
    yield running
    running.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"---- ringmq log tail ----\n{running.log_tail()}")
    running.log.close()


class LayeredClient:
    """A paho client over `transport` ("tls", "ws" or "wss"), connected, loop running."""

    def __init__(self, broker, transport, pki, cafile="ca.pem", client_cert=None):
        self.messages = queue.Queue()
        connack = queue.Queue()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id(transport),
                                transport="websockets" if transport in ("ws", "wss") else "tcp")
        self.paho.reconnect_delay_set(min_delay=60, max_delay=60)
        if transport in ("ws", "wss"):
            self.paho.ws_set_options(path="/mqtt")
        if transport in ("tls", "wss"):
            certfile, keyfile = (None, None)
            if client_cert:
                certfile, keyfile = str(pki / f"{client_cert}.pem"), str(pki / f"{client_cert}.key")
            self.paho.tls_set(ca_certs=str(pki / cafile), certfile=certfile, keyfile=keyfile,
                              cert_reqs=ssl.CERT_REQUIRED)
        self.paho.on_connect = lambda _c, _u, flags, reason, _p: connack.put(reason)
        self.paho.on_message = lambda _c, _u, message: self.messages.put(message)
        self.subscribed = queue.Queue()
        self.paho.on_subscribe = lambda _c, _u, mid, reasons, _p: self.subscribed.put(reasons)
        self.paho.connect("127.0.0.1", broker.ports[transport], keepalive=30)
        self.paho.loop_start()
        try:
            reason = connack.get(timeout=WAIT_SECS)
        except queue.Empty:
            self.paho.loop_stop()
            raise AssertionError(f"no CONNACK over {transport} within {WAIT_SECS} s") from None
        assert not reason.is_failure, f"CONNACK refused over {transport}: {reason}"

    def subscribe(self, topic_filter, qos):
        self.paho.subscribe(topic_filter, qos)
        reasons = self.subscribed.get(timeout=WAIT_SECS)
        assert [reason.value for reason in reasons] == [qos]

    def publish(self, topic, payload, qos):
        info = self.paho.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=WAIT_SECS)
        assert info.is_published()

    def next_message(self):
        try:
            return self.messages.get(timeout=WAIT_SECS)
        except queue.Empty:
            raise AssertionError(f"no message within {WAIT_SECS} s") from None

    def close(self):
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.mark.parametrize("transport", ["tls", "ws", "wss"])
def test_round_trip_on_each_transport(layered, pki, transport):
    subscriber = LayeredClient(layered, transport, pki)
    subscriber.subscribe("layers/#", 1)
    publisher = LayeredClient(layered, transport, pki)
    # 200 kB: many TLS records and WebSocket frame reads for one PUBLISH [MQTT-6.0.0-2].
    big = bytes(range(256)) * 800
    for qos, payload in [(0, b"small"), (1, big)]:
        publisher.publish(f"layers/{transport}", payload, qos)
        message = subscriber.next_message()
        assert (message.topic, message.payload, message.qos) == (f"layers/{transport}", payload, qos)
    publisher.close()
    subscriber.close()


def test_messages_cross_between_all_four_listeners(layered, pki):
    """A publish on plain TCP reaches subscribers on TLS, WebSocket and WSS, and back."""
    subscribers = {transport: LayeredClient(layered, transport, pki) for transport in ("tls", "ws", "wss")}
    for subscriber in subscribers.values():
        subscriber.subscribe("cross/#", 1)
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("plain"))
    plain.connect("127.0.0.1", layered.port)
    plain.loop_start()
    plain.publish("cross/plain", b"from tcp", qos=1).wait_for_publish(timeout=WAIT_SECS)
    for subscriber in subscribers.values():
        assert subscriber.next_message().payload == b"from tcp"
    subscribers["wss"].publish("cross/wss", b"from wss", 1)
    for subscriber in subscribers.values():
        assert subscriber.next_message().payload == b"from wss"
    plain.disconnect()
    plain.loop_stop()
    for subscriber in subscribers.values():
        subscriber.close()


def test_client_certificate_over_wss(layered, pki):
    client = LayeredClient(layered, "wss", pki, client_cert="client")
    client.subscribe("cert/#", 0)
    client.publish("cert/a", b"mutual", 0)
    assert client.next_message().payload == b"mutual"
    client.close()


@pytest.mark.parametrize("transport", ["tls", "wss"])
def test_a_client_trusting_another_ca_refuses_the_server(layered, pki, transport):
    with pytest.raises(ssl.SSLError):
        LayeredClient(layered, transport, pki, cafile="rogue.pem")


def test_a_tls_connection_the_broker_closes_ends_with_close_notify(layered, pki):
    # OpenSSL (Python's ssl), with ragged EOFs reported: a broker close after a protocol
    # violation (a second CONNECT, [MQTT-3.1.0-2]) must end with close_notify, which reads as
    # b"" (a clean end), not SSLEOFError (a cut).
    import socket
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", layered.ports["tls"]), timeout=WAIT_SECS)
    with context.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as tls:
        client_id = unique_id("close").encode()
        connect = bytes([0x10, 12 + len(client_id), 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60])
        connect += len(client_id).to_bytes(2, "big") + client_id
        tls.sendall(connect + connect)
        received = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            received += chunk
        assert received == bytes([0x20, 2, 0, 0]), received
