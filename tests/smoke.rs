//! Smoke test of the real binary: start `ringmq` on a free loopback port (one worker, then
//! two), make a QoS 1 publish/subscribe round trip with a raw TCP client speaking through our
//! own codec, then stop it with SIGTERM and expect exit status 0 within a second.
//!
//! Independent clients (Mosquitto's, paho) are exercised by the integration suite; this test
//! only proves that bytes flow through the runtime both ways and that the stop is clean.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode, encode, Connect, ConnectReturnCode, Packet, PacketId, ProtocolVersion, Publish, QoS,
    SubackCode, Subscribe, TopicFilter, TopicName, Utf8Bytes,
};

/// The broker process; killed if the test fails before stopping it.
struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn start(workers: u16) -> Self {
        // A port the kernel just handed out and released; another process could take it in
        // between, which would show as a start-up failure, not a false pass.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args([
                "--workers",
                &workers.to_string(),
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--file-table-slots", "256", "--ring-entries", "256", "--recv-buffers", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringmq");
        Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    fn connect(&mut self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(self.addr) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
                    return Client { stream, input: BytesMut::new() };
                }
                Err(error) if Instant::now() < deadline => {
                    let status = self.child.try_wait().expect("status");
                    assert!(
                        status.is_none(),
                        "ringmq exited during start-up: {status:?} ({error})"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("ringmq did not listen on {}: {error}", self.addr),
            }
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: sends a signal to our own child process, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// SIGTERM, then the exit status (or a panic after a second).
    fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(1) {
            if let Some(status) = self.child.try_wait().expect("status") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("ringmq still running a second after SIGTERM");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Client {
    stream: TcpStream,
    input: BytesMut,
}

impl Client {
    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, &mut out);
        self.stream.write_all(&out).expect("write");
    }

    /// The next packet from the broker, within two seconds.
    fn receive(&mut self) -> Packet {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(packet) = decode(&mut self.input, 1 << 20).expect("broker sent valid MQTT")
            {
                return packet;
            }
            assert!(Instant::now() < deadline, "no packet from the broker within two seconds");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(len) => self.input.extend_from_slice(&chunk[..len]),
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    fn connect(&mut self, client_id: &'static str) {
        self.send(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_session: true,
            keep_alive_secs: 30,
            client_id: Utf8Bytes::from_static(client_id),
            will: None,
            username: None,
            password: None,
        })));
        match self.receive() {
            // [MQTT-3.2.0-1] the first packet from the server is CONNACK.
            Packet::Connack(connack) => assert_eq!(connack.code, ConnectReturnCode::Accepted),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

fn id(value: u16) -> PacketId {
    PacketId::new(value).expect("non-zero packet id")
}

#[test]
fn publish_subscribe_round_trip_then_a_clean_sigterm() {
    round_trip(1);
}

/// SIGHUP is reserved: logged and ignored, the broker keeps serving.
#[test]
fn sighup_is_ignored() {
    let mut broker = Broker::start(1);
    broker.connect().connect("before-hup");
    broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(100));
    broker.connect().connect("after-hup");
    let status = broker.terminate();
    assert!(status.success(), "ringmq exited with {status:?}");
}

/// The same with two workers: the clients may land on either and be handed to their client
/// id's home worker; the publish then crosses the mesh.
#[test]
fn publish_subscribe_round_trip_across_two_workers() {
    round_trip(2);
}

fn round_trip(workers: u16) {
    let mut broker = Broker::start(workers);
    let mut subscriber = broker.connect();
    subscriber.connect("smoke-subscriber");
    let filter = TopicFilter::new(Utf8Bytes::from_static("smoke/+")).expect("filter");
    subscriber.send(&Packet::Subscribe(Subscribe {
        packet_id: id(1),
        filters: vec![(filter, QoS::AtLeastOnce)],
    }));
    match subscriber.receive() {
        // [MQTT-3.8.4-1] SUBACK with the same packet id; QoS 1 granted.
        Packet::Suback(suback) => {
            assert_eq!(suback.packet_id, id(1));
            assert_eq!(suback.return_codes, vec![SubackCode::Granted(QoS::AtLeastOnce)]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let mut publisher = broker.connect();
    publisher.connect("smoke-publisher");
    let payload = Bytes::from(vec![0x5a; 3000]);
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::from_static("smoke/one"),
        packet_id: Some(id(7)),
        payload: payload.clone(),
    }));
    // [MQTT-4.3.2-2] the receiver of a QoS 1 PUBLISH answers PUBACK with its packet id.
    assert_eq!(publisher.receive(), Packet::Puback(id(7)));
    match subscriber.receive() {
        Packet::Publish(publish) => {
            assert_eq!(publish.topic.as_str(), "smoke/one");
            assert_eq!(publish.payload, payload);
            assert_eq!(publish.qos, QoS::AtLeastOnce);
            let packet_id = publish.packet_id.expect("QoS 1 carries a packet id");
            subscriber.send(&Packet::Puback(packet_id));
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    publisher.send(&Packet::Disconnect);
    let status = broker.terminate();
    assert!(status.success(), "ringmq exited with {status:?}");
}
