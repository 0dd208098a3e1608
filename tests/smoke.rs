//! Smoke test of the real binary: start `ringmq` on a free loopback port (one worker, then
//! two), make a QoS 1 publish/subscribe round trip with a raw TCP client speaking through our
//! own codec, then stop it with SIGTERM and expect exit status 0 within a second.
//!
//! Independent clients (Mosquitto's, paho) are exercised by the integration suite; this test
//! only proves that bytes flow through the runtime both ways and that the stop is clean. The
//! broker process is handled here (the one-second stop and the signals are the point); the
//! client is the suite's `RawClient` (`tests/common`).

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ConnectOptions, RawClient};
use ringmq::protocol::{ConnectReturnCode, Packet, PacketId, Publish, QoS, TopicName};

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

    /// A client connected (CONNECT answered with CONNACK 0) as `client_id`, once the broker
    /// listens.
    fn client(&mut self, client_id: &str) -> RawClient {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(error) = TcpStream::connect(self.addr) {
            let status = self.child.try_wait().expect("status");
            assert!(status.is_none(), "ringmq exited during start-up: {status:?} ({error})");
            assert!(Instant::now() < deadline, "ringmq did not listen on {}: {error}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut client = RawClient::open(self.addr);
        // [MQTT-3.2.0-1] the first packet from the server is CONNACK.
        let connack = client.connect(ConnectOptions::new(client_id));
        assert_eq!(connack.code, ConnectReturnCode::Accepted);
        client
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
    broker.client("before-hup");
    broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(100));
    broker.client("after-hup");
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
    let mut subscriber = broker.client("smoke-subscriber");
    // [MQTT-3.8.4-1] SUBACK with the same packet id; QoS 1 granted (checked by `subscribe`).
    subscriber.subscribe(&[("smoke/+", QoS::AtLeastOnce)]);

    let mut publisher = broker.client("smoke-publisher");
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
