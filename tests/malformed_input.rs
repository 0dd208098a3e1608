//! Malformed bytes on one raw connection close that connection only [MQTT-4.8.0-1]: rumqttc
//! clients connected to the same broker keep publishing and receiving, and the broker stays
//! up. Each case is a byte string written by hand, so it is not what our own encoder (or any
//! well-behaved client) would produce.

mod common;

use std::time::Duration;

use common::rumqtt::{options, Session};
use common::{unique_id, Broker, RawClient};
use rumqttc::QoS;

/// How long the broker may take to close a connection that sent a protocol violation.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// A CONNECT for client id "bad", MQTT 3.1.1, clean session, keepalive 30.
const CONNECT: &[u8] =
    &[0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3, b'b', b'a', b'd'];

/// (what it breaks, whether a valid CONNECT goes first, the bytes).
const CASES: &[(&str, bool, &[u8])] = &[
    // [MQTT-3.1.0-1] the first packet must be CONNECT.
    ("PUBLISH before CONNECT", false, &[0x30, 0x05, 0, 1, b'a', b'h', b'i']),
    // [MQTT-2.2.2-2] reserved packet type 0 / 15 (fixed header flags invalid).
    ("reserved packet type 0", false, &[0x00, 0x00]),
    ("reserved packet type 15 after CONNECT", true, &[0xF0, 0x00]),
    // Remaining length longer than four bytes (section 2.2.3).
    ("five-byte remaining length", true, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
    // [MQTT-3.1.2-3] the CONNECT reserved flag must be zero.
    (
        "CONNECT reserved flag set",
        false,
        &[0x10, 0x0F, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 30, 0, 3, b'b', b'a', b'd'],
    ),
    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
    ("second CONNECT", true, CONNECT),
    // [MQTT-3.3.1-4] a PUBLISH with both QoS bits set.
    ("PUBLISH with QoS 3", true, &[0x36, 0x07, 0, 1, b'a', 0, 1, b'h', b'i']),
    // [MQTT-3.8.1-1] SUBSCRIBE fixed-header flags must be 0010.
    ("SUBSCRIBE with flags 0000", true, &[0x80, 0x06, 0, 1, 0, 1, b'a', 0]),
    // [MQTT-3.3.2-2] a topic name with a wildcard.
    ("PUBLISH to a wildcard topic", true, &[0x30, 0x05, 0, 1, b'#', b'h', b'i']),
    // [MQTT-1.5.3-1] ill-formed UTF-8 in a topic name.
    ("PUBLISH topic not UTF-8", true, &[0x30, 0x06, 0, 2, 0xC3, 0x28, b'h', b'i']),
    // [MQTT-3.8.3-3] a SUBSCRIBE with no topic filter.
    ("SUBSCRIBE with no filter", true, &[0x82, 0x02, 0, 1]),
    // [MQTT-3.8.3-4] requested QoS 3 in SUBSCRIBE.
    ("SUBSCRIBE requesting QoS 3", true, &[0x82, 0x06, 0, 1, 0, 1, b'a', 3]),
];

#[test]
fn malformed_bytes_close_only_their_connection() {
    let mut broker = Broker::start(&[]);
    let mut subscriber = Session::connect(options(&broker, &unique_id("healthy-sub")));
    subscriber.subscribe("healthy/#", QoS::AtLeastOnce);
    let mut publisher = Session::connect(options(&broker, &unique_id("healthy-pub")));
    // A raw client that behaves, connected all along: it must survive every case too.
    let mut bystander = broker.raw_client(&unique_id("bystander"));

    for (round, (what, after_connect, bytes)) in CASES.iter().enumerate() {
        let mut bad = RawClient::open(broker.addr());
        if *after_connect {
            bad.send_bytes(CONNECT);
            match bad.receive() {
                ringmq::protocol::Packet::Connack(connack) => {
                    assert_eq!(
                        connack.code,
                        ringmq::protocol::ConnectReturnCode::Accepted,
                        "{what}"
                    );
                }
                other => panic!("{what}: expected CONNACK, got {other:?}"),
            }
        }
        bad.send_bytes(bytes);
        assert!(
            bad.wait_closed(CLOSE_WITHIN).is_some(),
            "{what}: the connection was not closed within {CLOSE_WITHIN:?}"
        );
        broker.assert_running();
        // The others carry on: a round trip through the broker after each case.
        let payload = format!("after {what}");
        publisher.publish(&format!("healthy/{round}"), QoS::AtLeastOnce, false, payload.clone());
        let got = subscriber.next_publish();
        assert_eq!(&got.payload[..], payload.as_bytes(), "{what}");
        bystander.send(&ringmq::protocol::Packet::Pingreq);
        assert_eq!(bystander.receive(), ringmq::protocol::Packet::Pingresp, "{what}");
    }
    publisher.disconnect();
    subscriber.disconnect();
}
