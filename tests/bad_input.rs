//! Bad input against the real binary: each test sends one kind of bad or hostile input on a
//! raw `TcpStream` (bytes crafted by hand or with `ringmq::protocol::encode`), checks that the
//! broker closes that connection (or bounds what it does) in bounded time, and then checks that
//! the broker still serves: a fresh client makes a QoS 1 publish round trip through it, and the
//! process is still running. Each test cites the rule it exercises.
//!
//! Every wait has a deadline; no test takes more than a few seconds.

mod common;
#[path = "robust_support/mod.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringmq::protocol::encode::encoded_len;
use ringmq::protocol::{Packet, PacketId, QoS, SubackCode, Subscribe};
use support::{closed_by_peer, connect_packet, encoded, filter, publish_qos0, Broker, Peer};

/// A CONNECT for client id `id`, MQTT 3.1.1, clean session, keepalive 30 s.
fn connect_bytes(id: &str) -> Vec<u8> {
    encoded(&connect_packet(id))
}

/// Like [`connected`], retrying (up to 2 s) while the broker refuses the connection at
/// `max_connections`; also returns how many attempts were refused.
fn connected_retrying(broker: &Broker, id: &str) -> (Peer, u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused = 0;
    loop {
        let mut peer = support::open(broker);
        peer.write(&connect_bytes(id));
        if peer.try_connack_accepted() {
            return (peer, refused);
        }
        refused += 1;
        assert!(Instant::now() < deadline, "{id}: refused for 2 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection that has sent CONNECT and read CONNACK 0.
fn connected(broker: &Broker, id: &str) -> Peer {
    let mut peer = support::open(broker);
    peer.write(&connect_bytes(id));
    peer.expect_connack_accepted();
    peer
}

/// Sends `bytes` on a fresh connection (after a CONNECT if `after_connect`), expects the
/// broker to close it within [`CLOSE_WITHIN`], then checks the broker still serves.
fn expect_closed_after(broker: &mut Broker, what: &str, after_connect: bool, bytes: &[u8]) {
    let mut peer = if after_connect { connected(broker, "bad") } else { support::open(broker) };
    peer.write(bytes);
    peer.expect_closed(what);
    support::round_trip(broker, what);
}

/// [MQTT-4.8.0-1] Unless stated otherwise, a protocol violation closes the connection: a
/// packet cut short by the client's EOF is never completed, so the broker closes, and the
/// half PUBLISH reaches no subscriber.
#[test]
fn truncated_packet_then_eof_is_closed_mqtt_4_8_0_1() {
    let mut broker = support::start(&[]);
    let mut watcher = connected(&broker, "watcher");
    let id = PacketId::new(1).expect("non-zero");
    let subscribe = Subscribe { packet_id: id, filters: vec![(filter("t/#"), QoS::AtMostOnce)] };
    watcher.write(&encoded(&Packet::Subscribe(subscribe)));
    watcher.expect_suback(id);
    let publish = encoded(&publish_qos0("t/truncated", &[7; 300]));
    for cut in [1, 2, 3, publish.len() / 2, publish.len() - 1] {
        let what = format!("PUBLISH cut after {cut} bytes, then EOF");
        let mut peer = connected(&broker, "truncated");
        peer.write(&publish[..cut]);
        peer.shutdown_write();
        peer.expect_closed(&what);
        support::round_trip(&mut broker, &what);
    }
    watcher.expect_silence(Duration::from_millis(200), "a truncated PUBLISH was delivered");
    // A CONNECT cut short, then EOF.
    let connect = connect_bytes("truncated-connect");
    let mut peer = support::open(&broker);
    peer.write(&connect[..connect.len() - 3]);
    peer.shutdown_write();
    peer.expect_closed("CONNECT cut short, then EOF");
    support::round_trip(&mut broker, "truncated packets");
}

/// A CONNECT cut short with the socket left open: the broker waits no longer than its
/// connect timeout (section 3.1.4: a server SHOULD close a connection that sends no CONNECT
/// within a reasonable time).
#[test]
fn truncated_connect_without_eof_is_closed_at_the_connect_timeout() {
    let mut broker = support::start(&["--connect-timeout-secs", "1"]);
    let connect = connect_bytes("half");
    let mut peer = support::open(&broker);
    let began = Instant::now();
    peer.write(&connect[..connect.len() / 2]);
    peer.expect_closed_within("half a CONNECT", Duration::from_secs(3));
    assert!(began.elapsed() >= Duration::from_millis(900), "closed before the timeout");
    support::round_trip(&mut broker, "half a CONNECT");
}

/// [MQTT-2.2.2-2] [MQTT-4.8.0-1] Bytes that are not MQTT at all: reserved packet types 0 and
/// 15, invalid flags, text. Before and after CONNECT.
#[test]
fn garbage_is_closed_mqtt_2_2_2_2() {
    let mut broker = support::start(&[]);
    let cases: [(&str, &[u8]); 5] = [
        ("packet type 0", &[0x00, 0x00]),
        ("packet type 15", &[0xF0, 0x00]),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("all ones", &[0xFF; 64]),
        ("PINGREQ with flags 0001", &[0xC1, 0x00]),
    ];
    for (what, bytes) in cases {
        expect_closed_after(&mut broker, what, false, bytes);
        expect_closed_after(&mut broker, &format!("{what} after CONNECT"), true, bytes);
    }
}

/// Section 2.2.3: the remaining length takes at most four bytes; a fourth byte with its
/// continuation bit set is refused at once, without waiting for more.
#[test]
fn five_byte_remaining_length_is_closed_section_2_2_3() {
    let mut broker = support::start(&[]);
    let five = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    expect_closed_after(&mut broker, "five-byte remaining length", true, &five);
    // Only the first five bytes: the fourth length byte already asks for a fifth.
    expect_closed_after(&mut broker, "four continuation bytes", true, &five[..5]);
    expect_closed_after(
        &mut broker,
        "five-byte length before CONNECT",
        false,
        &[0x10, 0x80, 0x80, 0x80, 0x80, 0x01],
    );
}

/// A packet over `--max-packet-size` is refused from its fixed header: only the header is
/// sent, and the broker closes without waiting for (or buffering) the body. Both a PUBLISH
/// after CONNECT and a CONNECT itself.
#[test]
fn oversized_packet_is_refused_from_its_header() {
    let mut broker = support::start(&["--max-packet-size", "4096"]);
    // PUBLISH, remaining length 1,000,000 (three length bytes): far over 4096.
    let header = [0x30, 0xC0, 0x84, 0x3D];
    expect_closed_after(&mut broker, "PUBLISH header announcing 1 MB", true, &header);
    // CONNECT announcing 200 MB (four length bytes), before anything else.
    expect_closed_after(
        &mut broker,
        "CONNECT header announcing 200 MB",
        false,
        &[0x10, 0x80, 0x80, 0x80, 0x64],
    );
    // Just over the limit: 4097 bytes in all (1 + 2 length bytes + 4094).
    let just_over = [0x30, 0xFE, 0x1F];
    expect_closed_after(&mut broker, "PUBLISH one byte over the limit", true, &just_over);
    // At the limit exactly, the packet is accepted and delivered: 4096 bytes in all.
    let mut peer = connected(&broker, "at-limit");
    let id = PacketId::new(1).expect("non-zero");
    let subscribe =
        Subscribe { packet_id: id, filters: vec![(filter("at/limit"), QoS::AtMostOnce)] };
    peer.write(&encoded(&Packet::Subscribe(subscribe)));
    peer.expect_suback(id);
    let head_bytes = encoded_len(&publish_qos0("at/limit", &[]));
    // Two length bytes either way: 4096 - 1 - 2 bytes of body.
    let publish = publish_qos0("at/limit", &vec![b'x'; 4096 - head_bytes - 1]);
    assert_eq!(encoded_len(&publish), 4096);
    peer.write(&encoded(&publish));
    assert_eq!(peer.expect_publish().payload.len(), 4096 - head_bytes - 1);
    support::round_trip(&mut broker, "oversized packets");
}

/// [MQTT-1.5.3-1] A UTF-8 string must be well-formed (the surrogates U+D800..U+DFFF
/// included), [MQTT-1.5.3-2] and must not hold U+0000: in a topic name, a client id and a
/// topic filter.
#[test]
fn invalid_utf8_is_closed_mqtt_1_5_3_1_and_1_5_3_2() {
    let mut broker = support::start(&[]);
    let topics: [(&str, &[u8]); 4] = [
        ("ill-formed UTF-8 topic", &[0xC3, 0x28]),
        ("surrogate U+D800 topic", &[0xED, 0xA0, 0x80]),
        ("overlong '/' topic", &[0xC0, 0xAF]),
        ("U+0000 in topic", &[b'a', 0x00, b'b']),
    ];
    for (what, topic) in topics {
        let mut publish = vec![0x30, (2 + topic.len() + 2) as u8, 0, topic.len() as u8];
        publish.extend_from_slice(topic);
        publish.extend_from_slice(b"hi");
        expect_closed_after(&mut broker, what, true, &publish);
    }
    // CONNECT with client id 0xFF 0xFE.
    let mut connect = vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2];
    connect.extend_from_slice(&[0xFF, 0xFE]);
    expect_closed_after(&mut broker, "ill-formed UTF-8 client id", false, &connect);
    // SUBSCRIBE to filter 0xC3 0x28.
    let subscribe = [0x82, 7, 0, 1, 0, 2, 0xC3, 0x28, 0];
    expect_closed_after(&mut broker, "ill-formed UTF-8 filter", true, &subscribe);
}

/// [MQTT-3.3.2-2] The topic name in a PUBLISH must not contain wildcards.
#[test]
fn wildcard_in_publish_topic_is_closed_mqtt_3_3_2_2() {
    let mut broker = support::start(&[]);
    for topic in ["a/+", "a/#", "#", "+", "a+/b", "sport/tennis#"] {
        let mut publish = vec![0x30, (2 + topic.len() + 2) as u8, 0, topic.len() as u8];
        publish.extend_from_slice(topic.as_bytes());
        publish.extend_from_slice(b"hi");
        expect_closed_after(&mut broker, &format!("PUBLISH to {topic:?}"), true, &publish);
    }
}

/// [MQTT-3.1.0-2] A second CONNECT is a protocol violation: the connection is closed, and
/// the session it had still serves a client that connects afresh.
#[test]
fn second_connect_is_closed_mqtt_3_1_0_2() {
    let mut broker = support::start(&[]);
    expect_closed_after(&mut broker, "a second CONNECT", true, &connect_bytes("bad"));
    expect_closed_after(&mut broker, "a second CONNECT, other id", true, &connect_bytes("other"));
    // The client id itself is not poisoned.
    let mut again = connected(&broker, "bad");
    again.ping();
}

/// [MQTT-3.1.0-1] The first packet from a client must be CONNECT: anything else first closes
/// the connection, without a CONNACK.
#[test]
fn first_packet_not_connect_is_closed_mqtt_3_1_0_1() {
    let mut broker = support::start(&[]);
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("non-zero"),
        filters: vec![(filter("a/#"), QoS::AtLeastOnce)],
    });
    let firsts = [
        ("PUBLISH first", encoded(&publish_qos0("a/b", b"x"))),
        ("SUBSCRIBE first", encoded(&subscribe)),
        ("PINGREQ first", encoded(&Packet::Pingreq)),
        ("DISCONNECT first", encoded(&Packet::Disconnect)),
        ("PUBACK first", encoded(&Packet::Puback(PacketId::new(1).expect("non-zero")))),
    ];
    for (what, bytes) in &firsts {
        let mut peer = support::open(&broker);
        peer.write(bytes);
        let received = peer.expect_closed(what);
        assert!(received.is_empty(), "{what}: the broker answered {received:?} before closing");
        support::round_trip(&mut broker, what);
    }
}

/// A slowloris client trickles a CONNECT one byte at a time and never finishes it: the
/// connect timeout counts from the connection's start, not from its last byte, so the
/// trickle does not keep it open (section 3.1.4).
#[test]
fn slowloris_connect_is_closed_at_the_connect_timeout() {
    let mut broker = support::start(&["--connect-timeout-secs", "1"]);
    let connect = connect_bytes("slowloris");
    let mut stream = support::open(&broker).into_stream();
    let began = Instant::now();
    let mut sent = 0;
    // One byte every 100 ms, never the last one; each write fails once the broker closed.
    let closed_at = loop {
        assert!(began.elapsed() < Duration::from_secs(4), "still open after 4 s");
        if sent + 1 < connect.len() && stream.write_all(&connect[sent..=sent]).is_err() {
            break began.elapsed();
        }
        sent = (sent + 1).min(connect.len() - 1);
        if closed_by_peer(&mut stream, Duration::from_millis(100)) {
            break began.elapsed();
        }
    };
    assert!(closed_at >= Duration::from_millis(900), "closed after {closed_at:?}, before 1 s");
    assert!(closed_at < Duration::from_millis(2500), "closed only after {closed_at:?}");
    support::round_trip(&mut broker, "slowloris");
}

/// `--max-connections`: a connection beyond it is accepted and closed at once (before it
/// sends anything), the clients already connected carry on, the refusal is counted, and a
/// slot freed is usable again.
#[test]
fn connections_beyond_max_connections_are_refused_and_counted() {
    let mut broker = support::start(&["--max-connections", "3", "--workers", "1"]);
    // The start-up probe's connection may still be closing: a holder refused then retries
    // (and that refusal is counted too).
    let mut refused = 0;
    let mut holders: Vec<Peer> = (0..3)
        .map(|index| {
            let (peer, retries) = connected_retrying(&broker, &format!("holder-{index}"));
            refused += retries;
            peer
        })
        .collect();
    let began = Instant::now();
    for attempt in 0..4 {
        refused += 1;
        let mut peer = support::open(&broker);
        let received = peer.expect_closed(&format!("connection {} of 3", 4 + attempt));
        assert!(received.is_empty(), "a refused connection got {received:?}");
    }
    assert!(began.elapsed() < Duration::from_secs(2), "refusals took {:?}", began.elapsed());
    for holder in &mut holders {
        holder.ping();
    }
    // One leaves; a fresh client then gets its slot and a round trip.
    holders.pop().expect("three holders").disconnect();
    let (peer, retries) = connected_retrying(&broker, "after-a-holder-left");
    refused += retries;
    support::round_trip_on(&mut broker, peer, "max_connections");
    let log = broker.stop();
    let counted: u64 = support::counter_sum(&log, "refused_max_connections");
    assert_eq!(counted, refused, "refusals counted in the workers' final counters:\n{log}");
}

/// `--subscriptions-per-session-max`: a client subscribing 100,000 filters (100 SUBSCRIBE
/// packets of 1,000) is granted the first 100 and refused the rest with 0x80, one return
/// code per filter in order [MQTT-3.9.3-1]; the broker stays responsive.
#[test]
fn subscribing_100k_filters_is_bounded_per_session() {
    let mut broker = support::start(&["--subscriptions-per-session-max", "100"]);
    let mut peer = connected(&broker, "greedy");
    let (packets, per_packet) = (100u16, 1000usize);
    let mut granted = 0;
    let mut refused = 0;
    let began = Instant::now();
    for packet in 0..packets {
        let filters = (0..per_packet)
            .map(|index| (filter(&format!("f/{packet}/{index}")), QoS::AtLeastOnce))
            .collect();
        let packet_id = PacketId::new(packet + 1).expect("non-zero");
        peer.write(&encoded(&Packet::Subscribe(Subscribe { packet_id, filters })));
        let suback = peer.expect_suback(packet_id);
        assert_eq!(suback.len(), per_packet, "one return code per filter [MQTT-3.9.3-1]");
        for code in suback {
            match code {
                SubackCode::Granted(QoS::AtLeastOnce) => granted += 1,
                SubackCode::Failure => refused += 1,
                other => panic!("unexpected return code {other:?}"),
            }
        }
    }
    assert_eq!((granted, refused), (100, 99_900));
    assert!(began.elapsed() < Duration::from_secs(20), "took {:?}", began.elapsed());
    // The first 100 are the ones held: a publish to f/0/99 reaches this client.
    peer.write(&encoded(&publish_qos0("f/0/99", b"held")));
    assert_eq!(peer.expect_publish().topic.as_str(), "f/0/99");
    peer.ping();
    support::round_trip(&mut broker, "100k filters");
}

/// A client that connects and then writes nothing more is not a problem for anyone else:
/// many idle half-open connections (no CONNECT) do not stop a fresh client.
#[test]
fn idle_connections_without_connect_do_not_block_others() {
    let mut broker = support::start(&["--connect-timeout-secs", "1"]);
    let idle: Vec<TcpStream> = (0..50).map(|_| support::open(&broker).into_stream()).collect();
    support::round_trip(&mut broker, "50 idle connections");
    // All of them are closed by the connect timeout.
    for mut stream in idle {
        assert!(
            closed_by_peer(&mut stream, Duration::from_secs(3)),
            "an idle connection outlived the connect timeout"
        );
    }
}
