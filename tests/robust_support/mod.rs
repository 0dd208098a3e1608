//! What `tests/bad_input.rs` and `tests/faults.rs` add to `tests/common` (which starts, stops
//! and kills the binary): a raw peer that writes any bytes, tolerates the broker closing
//! first, sees the close, and can die with a reset; a fresh client's publish round trip, the
//! "still serves" check after each bad-input case.
//!
//! Invariant: every wait has a deadline and fails the test when it passes.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

pub use crate::common::{unique_id, Broker};
use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode, encode, Connack, Connect, ConnectReturnCode, LastWill, Packet, PacketId,
    ProtocolVersion, Publish, QoS, SubackCode, Subscribe, TopicFilter, TopicName, Utf8Bytes,
};

/// How long the broker may take to close a connection it must close.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// How long a packet the broker owes may take to arrive.
const RECEIVE_WITHIN: Duration = Duration::from_secs(5);
const READ_SLICE: Duration = Duration::from_millis(20);

pub fn encoded(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, &mut out);
    out.to_vec()
}

pub fn connect_packet(client_id: &str) -> Packet {
    connect_packet_with(client_id, true, None)
}

pub fn connect_packet_with(client_id: &str, clean_session: bool, will: Option<LastWill>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session,
        keep_alive_secs: 30,
        client_id: Utf8Bytes::from(client_id.to_owned()),
        will,
        username: None,
        password: None,
    }))
}

/// A PUBLISH; `id` is used only for QoS 1 and 2.
pub fn publish_packet(topic: &str, qos: QoS, id: u16, dup: bool, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: TopicName::try_from(topic).expect("valid topic"),
        packet_id: (qos != QoS::AtMostOnce).then(|| packet_id(id)),
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn packet_id(value: u16) -> PacketId {
    PacketId::new(value).expect("a non-zero packet id")
}

pub fn subscribe_packet(id: u16, filter_text: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: packet_id(id),
        filters: vec![(filter(filter_text), qos)],
    })
}

pub fn publish_qos0(topic: &str, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::try_from(topic).expect("valid topic"),
        packet_id: None,
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("valid filter")
}

/// Starts the binary through `tests/common` (free port, readiness, log, kill on drop) with
/// `flags`, and two workers unless they say otherwise: a client is then often accepted by a
/// worker that is not its session's home, the handoff path.
pub fn start(flags: &[&str]) -> Broker {
    let mut all: Vec<&str> = flags.to_vec();
    if !flags.contains(&"--workers") {
        all.extend(["--workers", "2"]);
    }
    Broker::start(&all)
}

/// A new TCP connection to `broker`, nothing sent yet.
pub fn open(broker: &Broker) -> Peer {
    Peer::new(TcpStream::connect(broker.addr()).expect("connect to ringmq"))
}

/// The broker still serves: a fresh client subscribes to a topic of its own, publishes to it
/// at QoS 1, gets PUBACK [MQTT-4.3.2-2] and its own message back, and disconnects.
pub fn round_trip(broker: &mut Broker, after: &str) {
    broker.assert_running();
    let mut peer = open(broker);
    peer.write(&encoded(&connect_packet(&unique_id("fresh"))));
    peer.expect_connack_accepted();
    round_trip_on(broker, peer, after);
}

/// The round trip of [`round_trip`] on a client already connected.
pub fn round_trip_on(broker: &mut Broker, mut peer: Peer, after: &str) {
    let topic = format!("round-trip/{}", unique_id("topic"));
    let subscribe = Subscribe {
        packet_id: PacketId::new(1).expect("non-zero"),
        filters: vec![(filter(&topic), QoS::AtLeastOnce)],
    };
    peer.write(&encoded(&Packet::Subscribe(subscribe)));
    let granted = peer.expect_suback(PacketId::new(1).expect("non-zero"));
    assert_eq!(granted, [SubackCode::Granted(QoS::AtLeastOnce)], "after {after}");
    let id = PacketId::new(2).expect("non-zero");
    let payload = format!("after {after}");
    peer.write(&encoded(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from(topic.as_str()).expect("valid topic"),
        packet_id: Some(id),
        payload: Bytes::from(payload.clone()),
    })));
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match peer.receive() {
            Packet::Puback(acked_id) if acked_id == id => acked = true,
            Packet::Publish(publish) if publish.payload == payload.as_bytes() => {
                let delivery_id = publish.packet_id.expect("QoS 1 has a packet id");
                peer.write(&encoded(&Packet::Puback(delivery_id)));
                delivered = true;
            }
            other => panic!("after {after}: unexpected {other:?}"),
        }
    }
    peer.disconnect();
    broker.assert_running();
}

/// The sum over the workers' final counters (`name: N` in their Debug print) of `name`.
pub fn counter_sum(log: &str, name: &str) -> u64 {
    let key = format!("{name}: ");
    log.match_indices(&key)
        .map(|(at, _)| {
            let digits: String =
                log[at + key.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().expect("a counter value")
        })
        .sum()
}

/// Reads (and discards) until the peer closes (EOF or reset): `true`, or `timeout`: `false`.
pub fn closed_by_peer(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut peer = Peer::new(stream.try_clone().expect("clone the stream"));
    peer.wait_closed(timeout).is_some()
}

/// One raw connection to the broker.
pub struct Peer {
    stream: TcpStream,
    input: BytesMut,
}

enum Read1 {
    Bytes,
    Closed,
    Nothing,
}

impl Peer {
    fn new(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(READ_SLICE)).expect("read timeout");
        stream.set_write_timeout(Some(Duration::from_secs(5))).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self { stream, input: BytesMut::new() }
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes `bytes`. A broker that already closed (reset, broken pipe) is not an error
    /// here: the test then checks the close itself.
    pub fn write(&mut self, bytes: &[u8]) {
        if let Err(error) = self.stream.write_all(bytes) {
            assert!(
                matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "write: {error}"
            );
        }
    }

    /// The client dies: the socket is closed with a reset (SO_LINGER 0), as when its process
    /// is killed with unread data or its host vanishes, and no DISCONNECT is sent.
    pub fn kill(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: `linger` is a valid `struct linger` for SO_LINGER on our own open socket.
        let result = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }

    /// Sends CONNECT and returns the CONNACK.
    pub fn connect(&mut self, packet: &Packet) -> Connack {
        self.write(&encoded(packet));
        match self.receive() {
            Packet::Connack(connack) => connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        self.write(&encoded(packet));
    }

    /// The next packet within `timeout`, or `None`; panics if the broker closed.
    pub fn receive_within(&mut self, timeout: Duration) -> Option<Packet> {
        self.try_receive(timeout).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Nothing arrives for `duration` (a PINGREQ/PINGRESP then shows the connection alive).
    pub fn expect_silence(&mut self, duration: Duration, what: &str) {
        if let Some(packet) = self.receive_within(duration) {
            panic!("{what}: unexpected {packet:?}");
        }
        self.ping();
    }

    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    pub fn disconnect(mut self) {
        self.write(&encoded(&Packet::Disconnect));
    }

    /// Waits for the broker to close; returns the bytes it sent before, or panics after
    /// [`CLOSE_WITHIN`].
    pub fn expect_closed(&mut self, what: &str) -> Vec<u8> {
        self.expect_closed_within(what, CLOSE_WITHIN)
    }

    pub fn expect_closed_within(&mut self, what: &str, timeout: Duration) -> Vec<u8> {
        match self.wait_closed(timeout) {
            Some(_) => self.input.split().to_vec(),
            None => panic!("{what}: connection still open after {timeout:?}"),
        }
    }

    /// How long until the broker closed, or `None` if it did not within `timeout`.
    fn wait_closed(&mut self, timeout: Duration) -> Option<Duration> {
        let began = Instant::now();
        while began.elapsed() < timeout {
            if let Read1::Closed = self.read_once() {
                return Some(began.elapsed());
            }
        }
        None
    }

    fn read_once(&mut self) -> Read1 {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Read1::Closed,
            Ok(len) => {
                self.input.extend_from_slice(&chunk[..len]);
                Read1::Bytes
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Read1::Nothing
            }
            // The broker closing with our bytes unread shows as a reset.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => Read1::Closed,
            Err(error) => panic!("read: {error}"),
        }
    }

    /// The next packet within `timeout`; `Err` if the broker closed first.
    fn try_receive(&mut self, timeout: Duration) -> Result<Option<Packet>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match decode(&mut self.input, usize::MAX) {
                Ok(Some(packet)) => return Ok(Some(packet)),
                Ok(None) => {}
                Err(error) => return Err(format!("the broker sent invalid MQTT: {error}")),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if let Read1::Closed = self.read_once() {
                return Err("the broker closed the connection".to_owned());
            }
        }
    }

    pub fn receive(&mut self) -> Packet {
        match self.try_receive(RECEIVE_WITHIN) {
            Ok(Some(packet)) => packet,
            Ok(None) => panic!("no packet from the broker within {RECEIVE_WITHIN:?}"),
            Err(error) => panic!("{error}"),
        }
    }

    /// [MQTT-3.2.0-1] the first packet from the server is CONNACK; here it accepts.
    pub fn expect_connack_accepted(&mut self) {
        match self.receive() {
            Packet::Connack(connack) => assert_eq!(connack.code, ConnectReturnCode::Accepted),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Whether CONNECT was accepted; `false` if the broker closed the connection instead.
    pub fn try_connack_accepted(&mut self) -> bool {
        match self.try_receive(RECEIVE_WITHIN) {
            Ok(Some(Packet::Connack(connack))) => connack.code == ConnectReturnCode::Accepted,
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(_) => false,
        }
    }

    /// [MQTT-3.8.4-1] a SUBACK with the SUBSCRIBE's packet id; its return codes.
    pub fn expect_suback(&mut self, packet_id: PacketId) -> Vec<SubackCode> {
        match self.receive() {
            Packet::Suback(suback) if suback.packet_id == packet_id => suback.return_codes,
            other => panic!("expected SUBACK {packet_id:?}, got {other:?}"),
        }
    }

    pub fn expect_publish(&mut self) -> Publish {
        match self.receive() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// PINGREQ answered by PINGRESP [MQTT-3.12.4-1]: the connection is alive.
    pub fn ping(&mut self) {
        self.write(&encoded(&Packet::Pingreq));
        assert_eq!(self.receive(), Packet::Pingresp);
    }
}
