//! The runtime against real sockets on loopback: accept, refusal at `max_connections`, a full
//! direct file table, closing on undecodable input, and the stop. Each test starts its own
//! runtime on port 0 and stops it; each finishes well within a second.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{start, Running, RuntimeConfig};
use crate::broker::BrokerConfig;

fn runtime(adjust: impl FnOnce(&mut RuntimeConfig)) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut config = RuntimeConfig {
        listeners: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        workers: 1,
        file_table_slots: 64,
        ring_entries: 64,
        recv_buffers: 16,
        recv_buffer_bytes: 1024,
        ..RuntimeConfig::default()
    };
    adjust(&mut config);
    start(config, BrokerConfig::default()).expect("runtime starts")
}

fn connect(running: &Running) -> TcpStream {
    let stream = TcpStream::connect(running.local_addrs()[0]).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    stream
}

/// Whether the server closed the stream: EOF or a reset, within the read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            // io_uring task work aimed at this thread interrupts reads that have a timeout.
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// How long a test waits for an event it expects (a close, a CONNACK). The short read timeout
/// of [`connect`] is the window of a check that something does *not* happen; an expected event
/// on a loaded machine (other builds and tests on both cores) can take far longer than that.
const EVENT_BOUND: Duration = Duration::from_secs(5);

/// Whether the server closes the stream within [`EVENT_BOUND`] (returns as soon as it does).
fn closed_within_bound(stream: &mut TcpStream) -> bool {
    with_read_timeout(stream, EVENT_BOUND, closed_by_server)
}

/// Whether an accepting CONNACK arrives within [`EVENT_BOUND`] (returns as soon as it does).
fn connack_within_bound(stream: &mut TcpStream) -> bool {
    with_read_timeout(stream, EVENT_BOUND, connack_arrives)
}

fn with_read_timeout(
    stream: &mut TcpStream,
    timeout: Duration,
    check: fn(&mut TcpStream) -> bool,
) -> bool {
    let before = stream.read_timeout().expect("read timeout");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let result = check(stream);
    stream.set_read_timeout(before).expect("timeout");
    result
}

/// Packet type 15 is reserved [MQTT-2.2.1]: whatever else the codec does, it refuses this.
const UNDECODABLE: &[u8] = &[0xF0, 0x00];

#[test]
fn undecodable_input_closes_that_connection_only() {
    let running = runtime(|_| {});
    let mut bad = connect(&running);
    let mut idle = connect(&running);
    bad.write_all(UNDECODABLE).expect("write");
    assert!(closed_within_bound(&mut bad), "the sender of bad bytes is closed");
    assert!(!closed_by_server(&mut idle), "the other connection stays open");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].accepted, 2);
    assert_eq!(counters[0].decode_errors, 1);
    assert_eq!(counters[0].closed, 2, "the stop closed the idle one");
}

#[test]
fn connections_beyond_max_connections_are_accepted_and_closed() {
    let running = runtime(|config| config.max_connections = 2);
    let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(&running)).collect();
    let mut refused = connect(&running);
    assert!(closed_within_bound(&mut refused));
    for stream in &mut kept {
        assert!(!closed_by_server(stream), "connections within the limit stay");
    }
    drop(kept);
    // The slots freed: a new connection is served again (and closed only for bad input).
    let mut later = connect(&running);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!closed_by_server(&mut later));
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].refused_max_connections, 1);
}

/// With every direct descriptor in use, the kernel refuses the next accept (ENFILE, that one
/// connection is lost), accepting pauses, and it resumes when a connection closes: a client
/// waiting in the backlog is then accepted.
#[test]
fn a_full_file_table_pauses_accepting_until_a_slot_frees() {
    let running = runtime(|config| {
        config.file_table_slots = 2;
        config.rings_per_worker_max = 1;
    });
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&running)).collect();
    for stream in &mut held {
        assert!(!closed_by_server(stream));
    }
    let mut lost = connect(&running);
    assert!(
        closed_within_bound(&mut lost),
        "the accept that found the table full drops its connection"
    );
    let mut waiting = connect(&running);
    waiting.write_all(UNDECODABLE).expect("write");
    assert!(!closed_by_server(&mut waiting), "not accepted while the table is full");
    held[0].write_all(UNDECODABLE).expect("write");
    assert!(closed_within_bound(&mut held[0]));
    assert!(closed_within_bound(&mut waiting), "accepted (and served) once a slot freed");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].accept_paused_table_full, 1);
    assert_eq!(counters[0].accepted, 3);
}

/// A CONNECT of MQTT 3.1.1 with a clean session and the two-byte client id `id`.
fn connect_packet(id: [u8; 2]) -> [u8; 16] {
    let mut packet = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, 0, 0];
    packet[14..].copy_from_slice(&id);
    packet
}

/// Whether the server answered a CONNECT with an accepting CONNACK within the read timeout.
pub(super) fn connack_arrives(stream: &mut TcpStream) -> bool {
    let mut connack = [0u8; 4];
    loop {
        match stream.read_exact(&mut connack) {
            Ok(()) => return connack == [0x20, 2, 0, 0],
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// A worker holds more connections than one ring's file table: when the table taking new
/// connections is full it adds a ring (up to `rings_per_worker_max`), and connections on
/// every ring are served (receive, send, close). With every table full, accepting pauses as
/// with one ring, and resumes on the ring where a slot freed.
#[test]
fn a_worker_adds_rings_up_to_its_maximum_and_serves_connections_on_each() {
    let running = runtime(|config| {
        config.file_table_slots = 2;
        config.rings_per_worker_max = 3;
    });
    let mut held = Vec::new();
    for index in 0..6u8 {
        let mut stream = connect(&running);
        stream.write_all(&connect_packet([b'a', b'0' + index])).expect("write");
        assert!(connack_within_bound(&mut stream), "connection {index} served");
        held.push(stream);
    }
    let mut lost = connect(&running);
    assert!(closed_within_bound(&mut lost), "the accept that found every table full drops it");
    let mut waiting = connect(&running);
    waiting.write_all(&connect_packet(*b"w0")).expect("write");
    assert!(!connack_arrives(&mut waiting), "not accepted while every table is full");
    // Connection 3 is on the second ring: its receive sees the bad bytes, its close frees a
    // slot there, and the waiting client is accepted into that ring.
    held[3].write_all(UNDECODABLE).expect("write");
    assert!(closed_within_bound(&mut held[3]));
    assert!(connack_within_bound(&mut waiting), "accepted and served once a slot freed");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].accept_paused_table_full, 1);
    assert_eq!(counters[0].accepted, 7);
    assert_eq!(counters[0].closed, 7, "the stop closed every connection on every ring");
}

/// Rings planned ahead are set up at start: the worker has them before any connection.
#[test]
fn rings_per_worker_start_sets_up_rings_ahead() {
    let running = runtime(|config| {
        config.file_table_slots = 2;
        config.rings_per_worker_max = 4;
        config.rings_per_worker_start = 3;
    });
    let mut stream = connect(&running);
    stream.write_all(&connect_packet(*b"s0")).expect("write");
    assert!(connack_within_bound(&mut stream), "served");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].rings, 3, "three rings from the start, none added for one client");
    assert_eq!(counters[0].ring_setup_failures, 0);
}

#[test]
fn a_stop_closes_every_connection_and_ends_within_a_second() {
    let running = runtime(|_| {});
    let mut clients: Vec<TcpStream> = (0..5).map(|_| connect(&running)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let began = Instant::now();
    running.stop();
    let counters = running.join().expect("clean stop");
    assert!(began.elapsed() < Duration::from_secs(1), "stopped in {:?}", began.elapsed());
    assert_eq!(counters[0].closed, 5);
    for client in &mut clients {
        assert!(closed_within_bound(client));
    }
}

/// A fixed header arriving one byte per receive is buffered until it is complete; only then
/// does the codec judge it (here: a remaining length beyond `max_packet_size`).
#[test]
fn a_packet_split_across_receives_is_reassembled_before_it_is_judged() {
    let running = runtime(|_| {});
    let mut client = connect(&running);
    client.set_nodelay(true).expect("nodelay");
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    for byte in &header[..4] {
        client.write_all(&[*byte]).expect("write");
        assert!(!closed_by_server(&mut client), "an incomplete header is no error yet");
    }
    client.write_all(&header[4..]).expect("write");
    assert!(closed_within_bound(&mut client), "the complete header asks for too large a packet");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert!(counters[0].recv_completions >= 5, "{counters:?}");
    assert_eq!(counters[0].decode_errors, 1);
}

/// With a single provided buffer, receives that find the ring empty end with ENOBUFS and are
/// re-armed; no connection's bytes are lost or stuck.
#[test]
fn receives_survive_a_ring_with_one_buffer() {
    let running = runtime(|config| config.recv_buffers = 1);
    let mut clients: Vec<TcpStream> = (0..16).map(|_| connect(&running)).collect();
    std::thread::sleep(Duration::from_millis(50));
    for client in &mut clients {
        client.write_all(UNDECODABLE).expect("write");
    }
    for client in &mut clients {
        assert!(closed_within_bound(client), "every client's bytes were read and judged");
    }
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].decode_errors, 16);
    // Whether a receive found the ring empty depends on timing; it is reported, not assumed.
    eprintln!("receives without a buffer: {}", counters[0].recv_no_buffers);
}

/// A minimal MQTT client over our own codec, for the cross-worker test.
struct Client {
    stream: TcpStream,
    input: bytes::BytesMut,
}

impl Client {
    fn connect(running: &Running, client_id: &str) -> Self {
        use crate::protocol::{Connect, Packet, ProtocolVersion, Utf8Bytes};
        let mut client = Self { stream: connect(running), input: bytes::BytesMut::new() };
        let client_id = Utf8Bytes::new(bytes::Bytes::from(client_id.to_owned())).expect("utf-8");
        client.send(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_session: true,
            keep_alive_secs: 30,
            client_id,
            will: None,
            username: None,
            password: None,
        })));
        assert!(matches!(client.receive(), Packet::Connack(_)));
        client
    }

    fn send(&mut self, packet: &crate::protocol::Packet) {
        let mut out = bytes::BytesMut::new();
        crate::protocol::encode(packet, &mut out);
        self.stream.write_all(&out).expect("write");
    }

    fn receive(&mut self) -> crate::protocol::Packet {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(packet) =
                crate::protocol::decode(&mut self.input, 1 << 20).expect("valid MQTT")
            {
                return packet;
            }
            assert!(Instant::now() < deadline, "no packet within two seconds");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed by the broker"),
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
}

/// Two workers: connections land on either (SO_REUSEPORT) and move to their client id's home
/// worker, and publishes reach subscribers on the other worker through the mesh. With 16
/// clients, that none needs a handoff has a chance of 2^-16.
#[test]
fn two_workers_hand_connections_home_and_route_across_the_mesh() {
    use crate::protocol::{
        Packet, PacketId, Publish, QoS, Subscribe, TopicFilter, TopicName, Utf8Bytes,
    };
    let running = runtime(|config| config.workers = 2);
    let mut subscribers: Vec<Client> =
        (0..8).map(|i| Client::connect(&running, &format!("sub-{i}"))).collect();
    let packet_id = PacketId::new(1).expect("non-zero");
    for subscriber in &mut subscribers {
        let filter = TopicFilter::new(Utf8Bytes::from_static("x/#")).expect("filter");
        subscriber.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter, QoS::AtMostOnce)],
        }));
        assert!(matches!(subscriber.receive(), Packet::Suback(_)));
    }
    // Interest travels between workers asynchronously; give it a moment to settle.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..8 {
        let mut publisher = Client::connect(&running, &format!("pub-{i}"));
        let topic =
            TopicName::new(Utf8Bytes::new(bytes::Bytes::from(format!("x/{i}"))).expect("utf-8"))
                .expect("topic");
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(packet_id),
            payload: bytes::Bytes::from(vec![i as u8; 8]),
        }));
        assert_eq!(publisher.receive(), Packet::Puback(packet_id));
    }
    for subscriber in &mut subscribers {
        let mut seen: Vec<u8> = (0..8)
            .map(|_| match subscriber.receive() {
                Packet::Publish(publish) => publish.payload[0],
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<u8>>(), "every subscriber got every message");
    }
    running.stop();
    let counters = running.join().expect("clean stop");
    let out: u64 = counters.iter().map(|c| c.handoffs_out).sum();
    let into: u64 = counters.iter().map(|c| c.handoffs_in).sum();
    assert!(out > 0, "{counters:?}");
    assert_eq!(out, into, "every handed-off connection arrived");
    assert_eq!(counters.iter().map(|c| c.handoff_failures).sum::<u64>(), 0);
}

/// A client id whose session lives on `worker` of `workers`.
fn client_id_homed_on(prefix: &str, worker: u16, workers: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| crate::broker::home_worker(id.as_bytes(), workers).0 == worker)
        .expect("some id hashes to every worker")
}

/// A publisher on worker `from` floods a QoS 1 subscriber on worker `to` with 300 messages in
/// one write; every message arrives, in order. Returns the workers' counters.
fn flood(running: Running, from: u16, to: u16) -> Vec<super::worker::WorkerCounters> {
    use crate::protocol::{
        Packet, PacketId, Publish, QoS, Subscribe, TopicFilter, TopicName, Utf8Bytes,
    };
    let workers = u16::try_from(running.threads.len()).expect("at most 128 workers");
    let mut subscriber = Client::connect(&running, &client_id_homed_on("sub", to, workers));
    let first = PacketId::new(1).expect("non-zero");
    let filter = TopicFilter::new(Utf8Bytes::from_static("flood/#")).expect("filter");
    subscriber.send(&Packet::Subscribe(Subscribe {
        packet_id: first,
        filters: vec![(filter, QoS::AtLeastOnce)],
    }));
    assert!(matches!(subscriber.receive(), Packet::Suback(_)));
    let mut publisher = Client::connect(&running, &client_id_homed_on("pub", from, workers));
    const MESSAGES: u16 = 300;
    let mut burst = bytes::BytesMut::new();
    for n in 1..=MESSAGES {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::from_static("flood/x"),
            packet_id: PacketId::new(n),
            payload: bytes::Bytes::copy_from_slice(&n.to_be_bytes()),
        });
        crate::protocol::encode(&publish, &mut burst);
    }
    publisher.stream.write_all(&burst).expect("write");
    let mut received = Vec::new();
    while received.len() < usize::from(MESSAGES) {
        match subscriber.receive() {
            Packet::Publish(publish) => {
                received.push(u16::from_be_bytes([publish.payload[0], publish.payload[1]]));
                subscriber.send(&Packet::Puback(publish.packet_id.expect("QoS 1")));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // [MQTT-4.6.0-2] order is kept for one publisher on one topic.
    assert_eq!(received, (1..=MESSAGES).collect::<Vec<_>>());
    running.stop();
    running.join().expect("clean stop")
}

/// A tiny mesh (one item per ring, an overflow bound of one): the flood from worker 1 to
/// worker 0 drives the mesh into backpressure; worker 1's reading pauses and resumes, and
/// nothing is lost or reordered.
#[test]
fn mesh_backpressure_pauses_reading_and_loses_nothing() {
    let running = runtime(|config| {
        config.workers = 2;
        config.mesh_ring_depth = 1;
        config.mesh_overflow_max = 1;
    });
    let counters = flood(running, 1, 0);
    assert!(counters[1].reads_paused > 0, "the flood met backpressure: {counters:?}");
}

/// A turn decodes at most `turn_packets_max` packets: the rest of a burst waits for later
/// turns (its receive paused), and still arrives complete and in order.
#[test]
fn the_turn_budget_defers_input_without_losing_it() {
    let running = runtime(|config| config.turn_packets_max = 8);
    let counters = flood(running, 0, 0);
    assert!(counters[0].reads_paused > 0, "the burst exceeded a turn's budget: {counters:?}");
}

/// A closing connection whose peer does not read: its output cannot leave, and after
/// `close_linger_millis` the send is cancelled and the connection closed anyway.
#[test]
fn a_close_waits_for_output_only_until_the_linger_deadline() {
    use crate::protocol::{
        Packet, PacketId, Publish, QoS, Subscribe, TopicFilter, TopicName, Utf8Bytes,
    };
    let running = runtime(|config| {
        config.socket_sndbuf_bytes = 4096;
        config.close_linger_millis = 200;
    });
    let mut reader = Client::connect(&running, "stalled");
    let packet_id = PacketId::new(1).expect("non-zero");
    let filter = TopicFilter::new(Utf8Bytes::from_static("big")).expect("filter");
    reader.send(&Packet::Subscribe(Subscribe {
        packet_id,
        filters: vec![(filter, QoS::AtMostOnce)],
    }));
    assert!(matches!(reader.receive(), Packet::Suback(_)));
    let mut publisher = Client::connect(&running, "flooder");
    for _ in 0..64 {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::from_static("big"),
            packet_id: None,
            payload: bytes::Bytes::from(vec![7u8; 64 * 1024]),
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The reader has read nothing since SUBACK: the broker's send to it is stuck. Now it
    // breaks the protocol, so the broker closes it.
    reader.stream.write_all(UNDECODABLE).expect("write");
    std::thread::sleep(Duration::from_millis(600));
    reader.stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    assert!(closed_by_server(&mut reader.stream), "closed after the linger time");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert_eq!(counters[0].linger_expired, 1, "{counters:?}");
}

/// The broker's keepalive wheel is driven by the wait's timeout: a client silent for 1.5 times
/// its keepalive is closed [MQTT-3.1.2-24], and the idle worker does not spin meanwhile (a
/// handful of loop turns, not thousands).
#[test]
fn keepalive_expiry_is_driven_by_the_wait_timeout_without_spinning() {
    use crate::protocol::{Connect, Packet, ProtocolVersion, Utf8Bytes};
    let running = runtime(|_| {});
    let mut client = Client { stream: connect(&running), input: bytes::BytesMut::new() };
    client.send(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive_secs: 1,
        client_id: Utf8Bytes::from_static("sleepy"),
        will: None,
        username: None,
        password: None,
    })));
    assert!(matches!(client.receive(), Packet::Connack(_)));
    let began = Instant::now();
    client.stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    assert!(closed_by_server(&mut client.stream), "closed for silence");
    let silent = began.elapsed();
    assert!(
        silent >= Duration::from_millis(1400),
        "closed after {silent:?}, before 1.5 x keepalive"
    );
    assert!(silent < Duration::from_millis(2500), "closed only after {silent:?}");
    running.stop();
    let counters = running.join().expect("clean stop");
    assert!(counters[0].ring.turns < 100, "the idle loop spun: {:?}", counters[0].ring);
}

/// A new connection's first receive is single-shot (`events.rs`, `arm_first_recv`): when a
/// client sends its CONNECT and SUBSCRIBE in one write, both arrive in that receive, and on a
/// handoff the SUBSCRIBE travels as leftover input to the home worker, which answers it.
/// With 16 clients, that none needs a handoff has a chance of 2^-16.
#[test]
fn a_subscribe_sent_with_the_connect_survives_the_handoff() {
    use crate::protocol::{
        Connect, Packet, PacketId, ProtocolVersion, QoS, Subscribe, TopicFilter, Utf8Bytes,
    };
    let running = runtime(|config| config.workers = 2);
    for i in 0..16 {
        let mut client = Client { stream: connect(&running), input: bytes::BytesMut::new() };
        let client_id = Utf8Bytes::new(bytes::Bytes::from(format!("both-{i}"))).expect("utf-8");
        let mut out = bytes::BytesMut::new();
        let connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_session: true,
            keep_alive_secs: 30,
            client_id,
            will: None,
            username: None,
            password: None,
        };
        crate::protocol::encode(&Packet::Connect(Box::new(connect)), &mut out);
        let filter = TopicFilter::new(Utf8Bytes::from_static("both/#")).expect("filter");
        let packet_id = PacketId::new(7).expect("non-zero");
        let subscribe = Subscribe { packet_id, filters: vec![(filter, QoS::AtLeastOnce)] };
        crate::protocol::encode(&Packet::Subscribe(subscribe), &mut out);
        client.stream.write_all(&out).expect("write");
        assert!(matches!(client.receive(), Packet::Connack(_)));
        match client.receive() {
            Packet::Suback(suback) => assert_eq!(suback.packet_id, packet_id),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    running.stop();
    let counters = running.join().expect("clean stop");
    let out: u64 = counters.iter().map(|c| c.handoffs_out).sum();
    assert!(out > 0, "{counters:?}");
    assert_eq!(out, counters.iter().map(|c| c.handoffs_in).sum::<u64>());
}
