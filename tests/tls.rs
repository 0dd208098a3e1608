//! MQTT over TLS against the real binary, with Mosquitto's own clients (`mosquitto_pub` and
//! `mosquitto_sub` with `--cafile/--cert/--key`): a round trip, and every way a handshake
//! must fail — a server certificate the client does not trust, client certificates that are
//! untrusted, expired or missing when required. The certificates are made per test with
//! rcgen in a directory of the test's own.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{free_port, Broker};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long a Mosquitto client may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a test's PKI: a CA, a server certificate for 127.0.0.1/localhost, a client
/// certificate (CN "alice"), an expired one, and a client certificate from another CA.
struct Pki {
    dir: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, key)
}

fn leaf(common_name: &str, names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*name).try_into().expect("dns name")),
        })
        .collect();
    params
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringmq-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Self { dir };
        let (ca_params, ca_key) = ca("ringmq test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        pki.write("ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(ca_params, ca_key);
        pki.issue(&issuer, "server", leaf("localhost", &["localhost", "127.0.0.1"]));
        pki.issue(&issuer, "client", leaf("alice", &[]));
        let mut expired = leaf("alice", &[]);
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        pki.issue(&issuer, "expired", expired);
        let (rogue_params, rogue_key) = ca("someone else's CA");
        pki.write("rogue-ca.pem", &rogue_params.self_signed(&rogue_key).expect("ca").pem());
        let rogue = Issuer::new(rogue_params, rogue_key);
        pki.issue(&rogue, "rogue", leaf("alice", &["localhost", "127.0.0.1"]));
        pki
    }

    /// Signs `params` with `issuer`; writes NAME.pem and NAME.key.
    fn issue(&self, issuer: &Issuer<'_, KeyPair>, name: &str, params: CertificateParams) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("sign");
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("write pki file");
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker with a TLS listener using the PKI's server certificate, plus `flags`.
/// The TLS port is picked anew for each start attempt, so one taken meanwhile is replaced.
fn tls_broker(pki: &Pki, flags: &[&str]) -> (Broker, u16) {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut port = 0;
    let broker = Broker::start_with(|| {
        port = free_port();
        let mut all = vec!["--tls-bind".to_owned(), format!("127.0.0.1:{port}")];
        all.extend(["--certfile".to_owned(), cert.clone(), "--keyfile".to_owned(), key.clone()]);
        all.extend(flags.iter().map(|flag| (*flag).to_owned()));
        all
    });
    (broker, port)
}

/// `--cafile ca.pem` plus, for `Some(name)`, `--cert NAME.pem --key NAME.key`.
fn tls_args(pki: &Pki, cafile: &str, client: Option<&str>) -> Vec<String> {
    let mut args = vec!["--cafile".to_owned(), pki.path(cafile)];
    if let Some(name) = client {
        args.extend(["--cert".to_owned(), pki.path(&format!("{name}.pem"))]);
        args.extend(["--key".to_owned(), pki.path(&format!("{name}.key"))]);
    }
    args
}

fn mosquitto(program: &str, port: u16, args: &[String]) -> Command {
    let mut command = Command::new(program);
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    command.stdin(Stdio::null());
    command
}

/// Runs `mosquitto_pub` (bounded by a kill after `CLIENT_TIMEOUT`) and returns its output.
fn publish(port: u16, args: &[String]) -> Output {
    let child = mosquitto("mosquitto_pub", port, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("run mosquitto_pub (apt-get install mosquitto-clients): {error}")
        });
    common::wait_bounded(child, "mosquitto_pub", CLIENT_TIMEOUT)
}

fn publish_ok(port: u16, args: &[String]) {
    let output = publish(port, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mosquitto_pub {args:?}: {}: {stderr}", output.status);
}

fn publish_refused(port: u16, args: &[String]) -> String {
    let output = publish(port, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "mosquitto_pub {args:?} was let in: {stderr}");
    stderr
}

/// A `mosquitto_sub -d` that has its SUBACK, its standard output read line by line.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
}

impl Subscriber {
    fn start(port: u16, args: &[String]) -> Self {
        let mut command = Command::new("stdbuf");
        command.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port.to_string()]);
        let mut child = command
            .args(["-d", "-W", "10"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let subscriber = Self { child, lines };
        subscriber.wait_for(|line| line.contains("received SUBACK"));
        subscriber
    }

    /// The next message line (`-d` adds "Client ..." and "Subscribed ..." lines).
    fn next_message(&self) -> String {
        self.wait_for(|line| !line.starts_with("Client ") && !line.starts_with("Subscribed ("))
    }

    /// Waits (bounded) for a line `matches`; panics with what was seen otherwise.
    fn wait_for(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => seen.push(line),
                Err(error) => panic!("mosquitto_sub: {error:?}; printed {seen:?}"),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `transport_errors` the workers counted, from the log a stopped broker leaves.
fn transport_errors(log: &str) -> u64 {
    counter(log, "transport_errors")
}

/// A worker counter summed over the workers, from the log a stopped broker leaves.
fn counter(log: &str, name: &str) -> u64 {
    let key = format!(" {name}: ");
    log.lines()
        .filter_map(|line| line.split(key.as_str()).nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum()
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

/// mosquitto_sub and mosquitto_pub over TLS, verifying ringmq's certificate against the CA
/// (and its IP address against the certificate's names), QoS 0 and 1.
#[test]
fn mosquitto_clients_round_trip_over_tls() {
    let pki = Pki::new("round-trip");
    let (broker, port) = tls_broker(&pki, &["--workers", "2"]);
    let tls = tls_args(&pki, "ca.pem", None);
    let mut sub_args = tls.clone();
    sub_args.extend(args(&["-t", "tls/#", "-v", "-q", "1"]));
    let subscriber = Subscriber::start(port, &sub_args);
    // 16 publishers, each accepted by either worker and handed to its session's home worker
    // when that is the other one: the TLS session moves with the connection, and the CONNACK
    // and PUBACK go out through it from there.
    for round in 0..16 {
        let (payload, qos) = (format!("over tls {round}"), (round % 2).to_string());
        let mut pub_args = tls.clone();
        // An id of its own (mosquitto_pub sends none by default, and a broker-assigned id
        // stays on the accepting worker).
        let id = format!("tls-pub-{round}");
        pub_args.extend(args(&["-i", &id, "-t", "tls/a", "-m", &payload, "-q", &qos]));
        publish_ok(port, &pub_args);
        assert_eq!(subscriber.next_message(), format!("tls/a {payload}"));
    }
    // The plain listener still serves plain MQTT beside it.
    broker.raw_client("plain-beside-tls");
    let log = broker.stop();
    assert_eq!(transport_errors(&log), 0);
    // Fails with probability 2^-16 if the kernel spreads the connections fairly.
    assert!(counter(&log, "handoffs_in") >= 1, "no TLS connection was handed off:\n{log}");
}

/// A client that does not trust the server's certificate (another CA) refuses it, and a
/// plain MQTT client on the TLS port is refused by ringmq (counted).
#[test]
fn untrusted_server_certificate_and_plain_mqtt_on_the_tls_port_are_refused() {
    let pki = Pki::new("untrusted-server");
    let (broker, port) = tls_broker(&pki, &[]);
    let mut untrusting = tls_args(&pki, "rogue-ca.pem", None);
    untrusting.extend(args(&["-t", "t", "-m", "m"]));
    let stderr = publish_refused(port, &untrusting);
    assert!(stderr.contains("TLS"), "{stderr}");
    publish_refused(port, &args(&["-t", "t", "-m", "plain"]));
    assert!(transport_errors(&broker.stop()) >= 2, "both failures counted");
}

/// Mutual TLS (`require_certificate`): a certificate signed by `cafile` gets in; one from
/// another CA, an expired one, and none at all are refused in the handshake (counted).
#[test]
fn required_client_certificates_good_untrusted_expired_and_missing() {
    let pki = Pki::new("mutual");
    let cafile = pki.path("ca.pem");
    let (broker, port) = tls_broker(&pki, &["--cafile", &cafile, "--require-certificate", "true"]);
    let message = args(&["-t", "t", "-m", "m", "-q", "1"]);
    let with = |client: Option<&str>| [tls_args(&pki, "ca.pem", client), message.clone()].concat();
    publish_ok(port, &with(Some("client")));
    publish_refused(port, &with(Some("rogue")));
    publish_refused(port, &with(Some("expired")));
    publish_refused(port, &with(None));
    publish_ok(port, &with(Some("client")));
    let log = broker.stop();
    assert_eq!(transport_errors(&log), 3, "one per refused handshake; log:\n{log}");
}

/// Without `require_certificate`, a client certificate is optional but still checked.
#[test]
fn optional_client_certificates_are_checked_when_presented() {
    let pki = Pki::new("optional");
    let cafile = pki.path("ca.pem");
    let (broker, port) = tls_broker(&pki, &["--cafile", &cafile]);
    let message = args(&["-t", "t", "-m", "m"]);
    publish_ok(port, &[tls_args(&pki, "ca.pem", None), message.clone()].concat());
    publish_ok(port, &[tls_args(&pki, "ca.pem", Some("client")), message.clone()].concat());
    publish_refused(port, &[tls_args(&pki, "ca.pem", Some("expired")), message].concat());
    assert_eq!(transport_errors(&broker.stop()), 1);
}

/// A ringmq process started without `Broker`'s readiness check (which connects anonymously):
/// ready when its TLS port accepts TCP; killed by PID when dropped.
struct Process(Child);

impl Process {
    fn start(flags: &[&str], tls_port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
            .args(["--log-level", "warn", "--ring-entries", "1024", "--recv-buffers", "256"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringmq");
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(Instant::now() < deadline, "ringmq's TLS port never opened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `use_identity_as_username`: with anonymous clients refused and a password file that does
/// not list the certificate's name, a client with a certificate gets in on its CN, and a user
/// name and password it sends are ignored (the password file is not consulted on that
/// listener, as in Mosquitto); the same client without the option is refused (0x05
/// anonymous, 0x04 with a name the file does not know).
#[test]
fn use_identity_as_username_lets_the_certificate_name_the_user() {
    let pki = Pki::new("identity");
    let (cafile, cert, key) = (pki.path("ca.pem"), pki.path("server.pem"), pki.path("server.key"));
    let passwords = pki.path("passwd");
    let created = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "-c", "-b", &passwords, "bob", "bob-secret"])
        .output()
        .expect("ringmq passwd");
    assert!(created.status.success(), "{created:?}");
    let message =
        [tls_args(&pki, "ca.pem", Some("client")), args(&["-t", "t", "-m", "m"])].concat();
    let wrong_password = [message.clone(), args(&["-u", "bob", "-P", "wrong"])].concat();
    for use_identity in ["true", "false"] {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let flags = [
            "--tls-bind",
            &bind,
            "--certfile",
            &cert,
            "--keyfile",
            &key,
            "--cafile",
            &cafile,
            "--require-certificate",
            "true",
            "--allow-anonymous",
            "false",
            "--password-file",
            &passwords,
            "--use-identity-as-username",
            use_identity,
        ];
        let _broker = Process::start(&flags, port);
        if use_identity == "true" {
            publish_ok(port, &message);
            publish_ok(port, &wrong_password);
        } else {
            let stderr = publish_refused(port, &message);
            assert!(stderr.contains("not authori"), "{stderr}");
            let stderr = publish_refused(port, &wrong_password);
            assert!(stderr.contains("bad user name or password"), "{stderr}");
        }
    }
}

#[test]
fn a_missing_certificate_file_stops_start_up_with_its_name() {
    let missing = Path::new("/nonexistent/ringmq/server.pem");
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--tls-bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--certfile", &missing.to_string_lossy(), "--keyfile", "/nonexistent/key"])
        .output()
        .expect("run ringmq");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/ringmq/server.pem"), "{stderr}");
}

/// SIGHUP reloads the certificates without dropping connections: the server's certificate is
/// replaced by one from another CA; a subscriber connected before keeps receiving, a new
/// client trusting only the new CA gets in, one trusting only the old CA is refused.
#[test]
fn sighup_reloads_the_certificates_and_keeps_open_connections() {
    let pki = Pki::new("reload");
    let (broker, port) = tls_broker(&pki, &[]);
    let mut sub_args = tls_args(&pki, "ca.pem", None);
    sub_args.extend(args(&["-i", "reload-sub", "-t", "reload/#", "-v"]));
    let subscriber = Subscriber::start(port, &sub_args);
    for name in ["pem", "key"] {
        let rogue = std::fs::read(pki.path(&format!("rogue.{name}"))).expect("read");
        std::fs::write(pki.path(&format!("server.{name}")), rogue).expect("replace");
    }
    broker.signal(libc::SIGHUP);
    let message = args(&["-t", "reload/a", "-m", "after reload"]);
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    // The reload is asynchronous: retry until the new certificate is served.
    while !publish(port, &[tls_args(&pki, "rogue-ca.pem", None), message.clone()].concat())
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(subscriber.next_message(), "reload/a after reload", "the old session lives on");
    publish_refused(port, &[tls_args(&pki, "ca.pem", None), message].concat());
    broker.stop();
}

// ---- Closes the broker starts, seen by clients we did not write --------------------------------

/// A CONNECT for `client_id` (MQTT 3.1.1, clean session, keepalive 60).
fn connect_bytes(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut packet =
        vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    packet
}

/// A rustls client stream to `port`, trusting the PKI's CA, with its handshake done.
fn rustls_client(
    pki: &Pki,
    port: u16,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(pki.path("ca.pem")).expect("ca");
    roots.add(ca).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("handshake");
    }
    stream
}

/// Reads until the stream ends; `Ok(bytes)` on a clean end (TLS: a close_notify came), the
/// error otherwise (rustls reports a cut as `UnexpectedEof`).
fn read_to_clean_end(stream: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map(|_| bytes)
}

/// TLS: a connection the broker closes (a protocol error, then a DISCONNECT) ends with a
/// close_notify, which rustls's client reads as a clean end instead of a truncation.
#[test]
fn a_tls_connection_the_broker_closes_ends_with_close_notify() {
    use std::io::Write;
    let pki = Pki::new("close-notify");
    let (broker, port) = tls_broker(&pki, &[]);
    let mut stream = rustls_client(&pki, port);
    stream.write_all(&connect_bytes("close-1")).expect("connect");
    // A second CONNECT is a protocol violation [MQTT-3.1.0-2]: the broker closes.
    stream.write_all(&connect_bytes("close-1")).expect("second connect");
    let bytes = read_to_clean_end(&mut stream).expect("a clean TLS end, with close_notify");
    assert_eq!(bytes, [0x20, 2, 0, 0], "the CONNACK, then nothing");
    let mut stream = rustls_client(&pki, port);
    stream.write_all(&connect_bytes("close-2")).expect("connect");
    stream.write_all(&[0xe0, 0]).expect("disconnect");
    assert_eq!(read_to_clean_end(&mut stream).expect("clean end"), [0x20, 2, 0, 0]);
    assert_eq!(transport_errors(&broker.stop()), 0);
}

/// WebSocket and WSS with tungstenite's client: the broker's close frame carries 1000 after a
/// DISCONNECT, 1002 after a broken packet, 1009 after a packet over `max_packet_size`, 1003
/// after a text frame; over WSS the TLS session then ends with close_notify.
#[test]
fn websocket_closes_carry_the_status_code_of_their_reason() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;
    let pki = Pki::new("ws-close");
    let (ws_port, wss_port) = (free_port(), free_port());
    let (ws_bind, wss_bind) = (format!("127.0.0.1:{ws_port}"), format!("127.0.0.1:{wss_port}"));
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let broker = Broker::start(&[
        "--ws-bind",
        &ws_bind,
        "--wss-bind",
        &wss_bind,
        "--certfile",
        &cert,
        "--keyfile",
        &key,
        "--max-packet-size",
        "1000",
    ]);
    let oversized = {
        let mut packet = vec![0x30, 0xe8, 0x07, 0, 1, b't'];
        packet.resize(3 + 1000, b'x');
        packet
    };
    let cases: [(&str, Message, CloseCode); 4] = [
        ("normal", Message::binary(vec![0xe0, 0]), CloseCode::Normal),
        ("protocol", Message::binary(vec![0x10, 0, 0]), CloseCode::Protocol),
        ("too-big", Message::binary(oversized), CloseCode::Size),
        ("text", Message::text("hello"), CloseCode::Unsupported),
    ];
    for secure in [false, true] {
        for (name, message, expected) in cases.clone() {
            let scheme = if secure { "wss" } else { "ws" };
            let port = if secure { wss_port } else { ws_port };
            let code = websocket_close_code(&pki, scheme, port, name, message);
            assert_eq!(code, expected, "{scheme} {name}");
        }
    }
    broker.stop();
}

/// Connects over WebSocket (`ws`, or `wss` through rustls), sends a CONNECT, reads the
/// CONNACK, sends `message`, and returns the close code of the broker's close frame; over
/// WSS, also checks that the TLS session then ends cleanly.
fn websocket_close_code(
    pki: &Pki,
    scheme: &str,
    port: u16,
    name: &str,
    message: tungstenite::Message,
) -> tungstenite::protocol::frame::coding::CloseCode {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;
    let mut request = format!("ws://127.0.0.1:{port}/mqtt").into_client_request().expect("req");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let stream: Box<dyn ReadWrite> = if scheme == "wss" {
        Box::new(rustls_client(pki, port))
    } else {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        Box::new(tcp)
    };
    let (mut socket, _) = tungstenite::client::client(request, stream).expect("upgrade");
    socket.send(Message::binary(connect_bytes(&format!("ws-{scheme}-{name}")))).expect("send");
    assert_eq!(socket.read().expect("CONNACK"), Message::binary(vec![0x20, 2, 0, 0]));
    socket.send(message).expect("send");
    let code = match socket.read() {
        Ok(Message::Close(Some(frame))) => frame.code,
        Ok(Message::Close(None)) => panic!("{scheme} {name}: a close frame without a code"),
        Ok(other) => panic!("{scheme} {name}: {other:?} instead of a close frame"),
        Err(error) => panic!("{scheme} {name}: {error} instead of a close frame"),
    };
    // tungstenite answers the close; then the stream ends. Over TLS the end must be clean.
    let _ = socket.flush();
    let mut rest = socket.into_inner();
    let end = read_to_clean_end(&mut rest);
    if scheme == "wss" {
        assert!(end.is_ok(), "{name}: no close_notify after the close frame: {end:?}");
    }
    code
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
