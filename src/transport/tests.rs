//! The layers driven by hand, with no socket: a real rustls client and hand-made WebSocket
//! frames on one side, the MQTT bytes that come out on the other.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::tls::TlsLayer;
use super::ws::{WsError, WsLayer};
use super::*;

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// A client frame: masked, as RFC 6455 requires of clients.
fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let header = FrameHeader { is_final, opcode, mask: Some(mask), ..FrameHeader::default() };
    let mut frame = Vec::new();
    header.format(payload.len() as u64, &mut frame).expect("format");
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Binary), true, payload)
}

fn joined(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|part| part.iter().copied()).collect()
}

fn upgraded() -> WsLayer {
    let mut ws = WsLayer::new(Arc::from("/mqtt"));
    let mut input = BytesMut::new();
    ws.receive(UPGRADE.as_bytes(), &mut input).expect("upgrade");
    let mut out = Vec::new();
    ws.take_output(&mut out);
    let response = String::from_utf8(joined(&out)).expect("text");
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    // RFC 6455 1.3's example key and its accept value.
    assert!(response.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{response}");
    assert!(response.contains("sec-websocket-protocol: mqtt\r\n"), "{response}");
    assert!(input.is_empty());
    ws
}

#[test]
fn an_upgrade_cut_anywhere_is_answered_once_whole() {
    for cut in 1..UPGRADE.len() {
        let mut ws = WsLayer::new(Arc::from("/mqtt"));
        let mut input = BytesMut::new();
        ws.receive(&UPGRADE.as_bytes()[..cut], &mut input).expect("first part");
        let mut out = Vec::new();
        ws.take_output(&mut out);
        assert!(out.is_empty() && !ws.is_open(), "answered after {cut} bytes");
        ws.receive(&UPGRADE.as_bytes()[cut..], &mut input).expect("rest");
        ws.take_output(&mut out);
        assert!(joined(&out).starts_with(b"HTTP/1.1 101"));
    }
}

/// Frames the client sends right behind its request are read, not lost.
#[test]
fn frames_pipelined_behind_the_upgrade_request_are_read() {
    let mut ws = WsLayer::new(Arc::from("/mqtt"));
    let mut bytes = UPGRADE.as_bytes().to_vec();
    bytes.extend(binary(b"\x10\x00"));
    let mut input = BytesMut::new();
    ws.receive(&bytes, &mut input).expect("receive");
    assert_eq!(&input[..], b"\x10\x00");
}

/// [MQTT-6.0.0-2] a packet may span frames; [MQTT-6.0.0-3] a frame may carry several
/// packets: the payloads are one byte stream, in order, whatever the frame boundaries.
#[test]
fn packets_spanning_frames_and_frames_carrying_several_packets_make_one_stream() {
    let mut ws = upgraded();
    let stream: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mut wire = Vec::new();
    // Frames of 1, 2, 125, 126 (16-bit length), 1000 bytes and the rest; a fragmented message.
    let sizes = [1, 2, 125, 126, 1000];
    let mut at = 0;
    for size in sizes {
        wire.extend(binary(&stream[at..at + size]));
        at += size;
    }
    wire.extend(client_frame(OpCode::Data(Data::Binary), false, &stream[at..at + 500]));
    wire.extend(client_frame(OpCode::Data(Data::Continue), true, &stream[at + 500..]));
    // Delivered in receives of every size from 1 to 97 bytes.
    for chunk in [1, 7, 13, 97] {
        let mut ws2 = upgraded();
        let mut input = BytesMut::new();
        for piece in wire.chunks(chunk) {
            ws2.receive(piece, &mut input).expect("frames");
        }
        assert_eq!(&input[..], &stream[..], "chunks of {chunk}");
    }
    let mut input = BytesMut::new();
    ws.receive(&wire, &mut input).expect("frames");
    assert_eq!(&input[..], &stream[..]);
}

#[test]
fn a_ping_is_answered_with_a_pong_carrying_its_payload() {
    let mut ws = upgraded();
    let mut input = BytesMut::new();
    let mut wire = client_frame(OpCode::Control(Control::Ping), true, b"are you there");
    // A ping between the fragments of a message is allowed (RFC 6455 5.4).
    wire.splice(0..0, client_frame(OpCode::Data(Data::Binary), false, b"ab"));
    wire.extend(client_frame(OpCode::Data(Data::Continue), true, b"cd"));
    let received = ws.receive(&wire, &mut input).expect("ping");
    assert!(!received.peer_closed);
    assert_eq!(&input[..], b"abcd");
    let mut out = Vec::new();
    ws.take_output(&mut out);
    assert_eq!(joined(&out), [&[0x8a, 13][..], b"are you there"].concat(), "unmasked pong");
}

#[test]
fn a_close_is_answered_with_a_close_and_ends_reading_and_sending() {
    let mut ws = upgraded();
    let mut input = BytesMut::new();
    let mut wire = client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xe8, b'b', b'y']);
    wire.extend(binary(b"after the close"));
    let received = ws.receive(&wire, &mut input).expect("close");
    assert!(received.peer_closed);
    assert!(input.is_empty(), "nothing is read after a close");
    let mut out = Vec::new();
    ws.take_output(&mut out);
    assert_eq!(joined(&out), vec![0x88, 2, 0x03, 0xe8], "the status code echoed");
    let mut mqtt = vec![Bytes::from_static(b"\x20\x02\x00\x00")];
    let mut framed = Vec::new();
    ws.frame(&mut mqtt, &mut framed);
    assert!(framed.is_empty() && mqtt.is_empty(), "no data frame after a close");
}

#[test]
fn output_is_one_binary_frame_in_front_of_the_brokers_bytes() {
    let mut ws = upgraded();
    let big = Bytes::from(vec![7u8; 70_000]);
    let mut mqtt = vec![Bytes::from_static(b"\x20\x02\x00\x00"), big.clone()];
    let mut out = Vec::new();
    ws.frame(&mut mqtt, &mut out);
    assert!(mqtt.is_empty());
    assert_eq!(out.len(), 3, "a header, then the two buffers as they were");
    // 64-bit length form for 70004 bytes.
    assert_eq!(&out[0][..], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x74]);
    assert_eq!(out[2].as_ptr(), big.as_ptr(), "the payload is not copied");
}

#[test]
fn frames_breaking_the_rules_end_the_connection() {
    let unmasked = {
        let header = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
        let mut frame = Vec::new();
        header.format(2, &mut frame).expect("format");
        frame.extend(b"\x10\x00");
        frame
    };
    let mut reserved = binary(b"x");
    reserved[0] |= 0x40;
    let cases: Vec<(Vec<u8>, WsError)> = vec![
        (client_frame(OpCode::Data(Data::Text), true, b"hi"), WsError::TextFrame),
        (unmasked, WsError::Unmasked),
        (reserved, WsError::ReservedBits),
        (client_frame(OpCode::Data(Data::Continue), true, b"x"), WsError::StrayContinuation),
        (client_frame(OpCode::Control(Control::Ping), false, b"x"), WsError::BadControlFrame),
        (client_frame(OpCode::Control(Control::Ping), true, &[0; 126]), WsError::BadControlFrame),
        (
            [client_frame(OpCode::Data(Data::Binary), false, b"a"), binary(b"b")].concat(),
            WsError::UnfinishedMessage,
        ),
    ];
    for (wire, expected) in cases {
        let mut ws = upgraded();
        let error = ws.receive(&wire, &mut BytesMut::new()).expect_err("refused");
        assert_eq!(error, expected);
    }
}

#[test]
fn bad_upgrade_requests_get_an_http_error_then_the_connection_ends() {
    let wrong_path = UPGRADE.replace("GET /mqtt ", "GET /other ");
    let no_key = UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let other_protocol = UPGRADE.replace("Protocol: mqtt", "Protocol: chat, superchat");
    let cases = [
        (wrong_path, "HTTP/1.1 404"),
        (no_key, "HTTP/1.1 400"),
        (other_protocol, "HTTP/1.1 400"),
        ("x".repeat(ws::HANDSHAKE_BYTES_MAX + 1), "HTTP/1.1 431"),
    ];
    for (request, status) in cases {
        let mut ws = WsLayer::new(Arc::from("/mqtt"));
        assert!(ws.receive(request.as_bytes(), &mut BytesMut::new()).is_err(), "{request}");
        let mut out = Vec::new();
        ws.take_output(&mut out);
        assert!(joined(&out).starts_with(status.as_bytes()), "{request}");
    }
}

#[test]
fn the_older_subprotocol_name_is_accepted_and_none_offered_is_tolerated() {
    for (offered, chosen) in [("mqttv3.1", Some("mqttv3.1")), ("", None)] {
        let request = if offered.is_empty() {
            UPGRADE.replace("Sec-WebSocket-Protocol: mqtt\r\n", "")
        } else {
            UPGRADE.replace("Protocol: mqtt", &format!("Protocol: {offered}"))
        };
        let mut ws = WsLayer::new(Arc::from("/mqtt"));
        ws.receive(request.as_bytes(), &mut BytesMut::new()).expect("upgrade");
        let mut out = Vec::new();
        ws.take_output(&mut out);
        let response = String::from_utf8(joined(&out)).expect("text");
        match chosen {
            Some(name) => {
                assert!(response.contains(&format!("protocol: {name}\r\n")), "{response}")
            }
            None => assert!(!response.contains("protocol"), "{response}"),
        }
    }
}

// ---- TLS ------------------------------------------------------------------------------------

/// A CA, a server certificate for localhost signed by it, and the client configuration
/// that trusts the CA.
struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).expect("root");
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki { server: Arc::new(server), client: Arc::new(client) }
}

/// Moves the client's pending records into the server layer; returns the MQTT bytes.
fn client_to_server(client: &mut ClientConnection, server: &mut Layered) -> BytesMut {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("client write");
    }
    let mut input = BytesMut::new();
    // In receives of 1000 bytes, as a small provided buffer would cut them.
    for piece in wire.chunks(1000) {
        server.receive(piece, &mut input).expect("server receive");
    }
    input
}

/// Moves the server's output into the client; returns the plaintext it reads and the MQTT
/// bytes the server counts as sent once all its wire bytes have left.
fn server_to_client(
    server: &mut Layered,
    mqtt: Vec<Bytes>,
    client: &mut ClientConnection,
) -> (Vec<u8>, usize) {
    let mut mqtt = mqtt;
    let mut out = Vec::new();
    server.output(&mut mqtt, &mut out).expect("server output");
    let wire = joined(&out);
    let sent = server.on_sent(wire.len());
    let mut slice = &wire[..];
    let mut plain = Vec::new();
    while !slice.is_empty() {
        client.read_tls(&mut slice).expect("client read");
        client.process_new_packets().expect("client process");
        match client.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("client read: {error}"),
        }
    }
    (plain, sent)
}

fn handshake(server: &mut Layered, client: &mut ClientConnection) {
    for _ in 0..4 {
        client_to_server(client, server);
        server_to_client(server, Vec::new(), client);
        if !client.is_handshaking() {
            return;
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn tls_carries_mqtt_both_ways_in_order() {
    let pki = pki();
    let mut server = Layered::new(Some(TlsLayer::new(pki.server).expect("layer")), None);
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(pki.client, name).expect("client");
    handshake(&mut server, &mut client);
    let upstream: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    client.writer().write_all(&upstream).expect("client write");
    assert_eq!(&client_to_server(&mut client, &mut server)[..], &upstream[..]);
    let downstream: Vec<Bytes> =
        (0..300).map(|i| Bytes::from(vec![(i % 256) as u8; 1 + i * 7])).collect();
    let expected = joined(&downstream);
    let (plain, sent) = server_to_client(&mut server, downstream, &mut client);
    assert_eq!(plain, expected);
    assert_eq!(sent, expected.len(), "MQTT bytes confirmed = plaintext delivered");
    assert_eq!(server.identity(), None, "no client certificate");
}

/// WSS: the upgrade and the frames travel inside TLS, in both directions.
#[test]
fn websocket_inside_tls_round_trips() {
    let pki = pki();
    let tls = TlsLayer::new(pki.server).expect("layer");
    let mut server = Layered::new(Some(tls), Some(WsLayer::new(Arc::from("/mqtt"))));
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(pki.client, name).expect("client");
    handshake(&mut server, &mut client);
    client.writer().write_all(UPGRADE.as_bytes()).expect("write");
    client.writer().write_all(&binary(b"\x10\x05hello")).expect("write");
    assert_eq!(&client_to_server(&mut client, &mut server)[..], b"\x10\x05hello");
    let connack = vec![Bytes::from_static(b"\x20\x02\x00\x00")];
    let (reply, sent) = server_to_client(&mut server, connack, &mut client);
    assert_eq!(sent, 4, "the CONNACK's bytes, not the upgrade response's or the framing");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(reply.ends_with(&[0x82, 4, 0x20, 2, 0, 0]), "{reply:?}");
}

#[test]
fn sent_wire_bytes_map_back_to_the_mqtt_bytes_they_carry() {
    let mut layered = Layered::new(None, Some(upgraded()));
    let mut out = Vec::new();
    layered.output(&mut vec![Bytes::from_static(b"abcd")], &mut out).expect("output");
    layered.output(&mut vec![Bytes::from_static(b"efghij")], &mut out).expect("output");
    // Wire: 2 + 4, then 2 + 6. A batch counts only once all its wire bytes left.
    assert_eq!(layered.on_sent(5), 0);
    assert_eq!(layered.on_sent(1), 4);
    assert_eq!(layered.on_sent(7), 0);
    assert_eq!(layered.on_sent(1), 6);
}

#[test]
fn garbage_instead_of_a_tls_handshake_ends_the_connection() {
    let pki = pki();
    let mut server = Layered::new(Some(TlsLayer::new(pki.server).expect("layer")), None);
    let error = server.receive(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c", &mut BytesMut::new());
    assert!(matches!(error, Err(TransportError::Tls(_))), "{error:?}");
    // rustls queued an alert for the peer.
    let mut out = Vec::new();
    server.output(&mut Vec::new(), &mut out).expect("alert");
    assert_eq!(out.first().map(|alert| alert[0]), Some(0x15), "an alert record");
}

// ---- Closes the broker starts ----------------------------------------------------------------

/// The server's frames in `wire` (unmasked), as (opcode, payload).
fn server_frames(mut wire: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let mut cursor = std::io::Cursor::new(wire);
        let (header, length) = FrameHeader::parse(&mut cursor).expect("parse").expect("whole");
        assert!(header.mask.is_none(), "server frames are not masked");
        let start = cursor.position() as usize;
        let end = start + length as usize;
        frames.push((header.opcode, wire[start..end].to_vec()));
        wire = &wire[end..];
    }
    frames
}

/// A close frame carries the status code; nothing is framed after it; a second close, or a
/// close before the upgrade, sends nothing.
#[test]
fn a_broker_close_sends_one_close_frame_with_its_code_last() {
    let mut layered = Layered::new(None, Some(upgraded()));
    let mut out = Vec::new();
    layered.output(&mut vec![Bytes::from_static(b"\x20\x02\x00\x05")], &mut out).expect("out");
    layered.close(close_code::TOO_BIG);
    layered.close(close_code::NORMAL);
    layered.output(&mut vec![Bytes::from_static(b"late")], &mut out).expect("out");
    let frames = server_frames(&joined(&out));
    assert_eq!(
        frames,
        vec![
            (OpCode::Data(Data::Binary), b"\x20\x02\x00\x05".to_vec()),
            (OpCode::Control(Control::Close), 1009u16.to_be_bytes().to_vec()),
        ]
    );
    let mut never_upgraded = Layered::new(None, Some(WsLayer::new(Arc::from("/mqtt"))));
    never_upgraded.close(close_code::NORMAL);
    let mut out = Vec::new();
    never_upgraded.output(&mut Vec::new(), &mut out).expect("out");
    assert!(out.is_empty(), "no close frame without a WebSocket");
}

#[test]
fn websocket_errors_map_to_their_close_codes() {
    for (bytes, code) in [
        (client_frame(OpCode::Data(Data::Text), true, b"hi"), close_code::UNSUPPORTED_DATA),
        (client_frame(OpCode::Data(Data::Continue), true, b"x"), close_code::PROTOCOL_ERROR),
    ] {
        let mut layered = Layered::new(None, Some(upgraded()));
        let error = layered.receive(&bytes, &mut BytesMut::new()).expect_err("refused");
        layered.close_after(&error);
        let mut out = Vec::new();
        layered.output(&mut Vec::new(), &mut out).expect("out");
        let frames = server_frames(&joined(&out));
        assert_eq!(frames, vec![(OpCode::Control(Control::Close), code.to_be_bytes().to_vec())]);
    }
}

/// TLS: the broker's close is a close_notify after the last data, which the client reads as
/// a clean end (rustls: `peer_has_closed`; its reader returns 0, not an unexpected EOF).
/// WSS: the close frame is inside TLS, before the close_notify.
#[test]
fn a_broker_close_over_tls_and_wss_ends_with_close_notify() {
    for websocket in [false, true] {
        let pki = pki();
        let tls = TlsLayer::new(pki.server).expect("layer");
        let ws = websocket.then(|| WsLayer::new(Arc::from("/mqtt")));
        let mut server = Layered::new(Some(tls), ws);
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = ClientConnection::new(pki.client, name).expect("client");
        handshake(&mut server, &mut client);
        if websocket {
            client.writer().write_all(UPGRADE.as_bytes()).expect("write");
        }
        // The client's Finished (and the upgrade): the server's handshake is done.
        client_to_server(&mut client, &mut server);
        let mut out = Vec::new();
        server.output(&mut vec![Bytes::from_static(b"\x20\x02\x00\x00")], &mut out).expect("o");
        server.close(close_code::NORMAL);
        server.output(&mut Vec::new(), &mut out).expect("close");
        let wire = joined(&out);
        let mut slice = &wire[..];
        let mut plain = Vec::new();
        let mut closed = false;
        while !slice.is_empty() {
            client.read_tls(&mut slice).expect("client read");
            let state = client.process_new_packets().expect("client process");
            closed |= state.peer_has_closed();
            match client.reader().read_to_end(&mut plain) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("client read: {error}"),
            }
        }
        assert!(closed, "close_notify received (websocket: {websocket})");
        if websocket {
            let text = String::from_utf8_lossy(&plain).into_owned();
            let body = &plain[text.find("\r\n\r\n").expect("response") + 4..];
            assert_eq!(
                server_frames(body),
                vec![
                    (OpCode::Data(Data::Binary), b"\x20\x02\x00\x00".to_vec()),
                    (OpCode::Control(Control::Close), 1000u16.to_be_bytes().to_vec()),
                ]
            );
        } else {
            assert_eq!(plain, b"\x20\x02\x00\x00");
        }
    }
}
