//! Support shared by the integration tests that drive the real `ringmq` binary.
//!
//! [`Broker`] starts the binary cargo built for this test run (`CARGO_BIN_EXE_ringmq`) on a
//! free loopback port with the flags a test asks for, waits until it answers an MQTT CONNECT
//! (no fixed sleep), captures its standard error, and kills it by PID when dropped; a test
//! that panics gets the broker's log printed beside its failure. [`RawClient`] speaks MQTT
//! through ringmq's own codec for what a real client library will not do on purpose (drop
//! the socket without DISCONNECT, go silent past its keepalive, send malformed bytes).
//! [`rumqtt`] wraps the rumqttc client (written by others) with bounded waits.
//!
//! Invariants: every wait here has a deadline and fails the test when it passes, so a hung
//! broker fails a test instead of hanging it; every broker gets its own port, so tests that
//! run in parallel never share one.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod rumqtt;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode, encode, Connack, Connect, LastWill, Packet, PacketId, ProtocolVersion, Publish, QoS,
    SubackCode, Subscribe, TopicFilter, TopicName, Utf8Bytes,
};

/// How long the broker may take from spawn to answering a CONNECT.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts: a port picked as free can be taken by another process before the broker
/// binds it; the broker then exits at once and we try another port.
const START_ATTEMPTS: usize = 3;
/// How much of the broker's log a failure message shows (its tail).
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// Flags every test broker gets: quiet logs, and rings and buffers sized for a test, not for
/// a million connections (tests run in parallel on a 2-core machine).
const BASE_FLAGS: &[&str] =
    &["--log-level", "info", "--ring-entries", "1024", "--recv-buffers", "256"];

/// The [`BASE_FLAGS`] pairs whose flag `flags` does not set itself (clap refuses a flag
/// given twice).
fn base_flags_not_in<'a>(flags: &[&str]) -> Vec<&'a str> {
    BASE_FLAGS.chunks(2).filter(|pair| !flags.contains(&pair[0])).flatten().copied().collect()
}

/// A running `ringmq` process on `127.0.0.1:port`, killed when dropped.
pub struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    log_reader: Option<JoinHandle<()>>,
}

impl Broker {
    /// Starts the broker with the default settings plus `flags` (e.g. `["--workers", "4"]`).
    pub fn start(flags: &[&str]) -> Self {
        Self::start_with(|| flags.iter().map(|flag| (*flag).to_owned()).collect())
    }

    /// As [`Broker::start`], with the flags made anew for each start attempt: a test that
    /// gives the broker more ports of its own (e.g. `--http-port`) picks them here, so a
    /// port taken by someone else before the broker binds it is replaced on the next attempt.
    pub fn start_with(mut make_flags: impl FnMut() -> Vec<String>) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let owned = make_flags();
            let flags: Vec<&str> = owned.iter().map(String::as_str).collect();
            let mut broker = Self::spawn(free_port(), &flags);
            match broker.wait_until_ready() {
                Ok(()) => return broker,
                Err(Startup::Exited(status)) => {
                    failures.push(format!("exited with {status}:\n{}", broker.log_tail()));
                }
                Err(Startup::TimedOut(why)) => {
                    panic!(
                        "ringmq did not answer CONNECT within {START_TIMEOUT:?} ({why});\
                         log:\n{}",
                        broker.log_tail()
                    )
                }
            }
        }
        panic!("ringmq did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n---\n"));
    }

    fn spawn(port: u16, flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(base_flags_not_in(flags))
            .args(flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the ringmq binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        // A thread drains the pipe so the broker never blocks on a full one.
        let log_reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(len) = stderr.read(&mut chunk) {
                if len == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .extend_from_slice(&chunk[..len]);
            }
        });
        Self { child, port, log, log_reader: Some(log_reader) }
    }

    /// Polls until this broker holds its port (its log says so) and an MQTT CONNECT is
    /// answered with CONNACK: a worker's loop is running. Until the log line, a CONNACK on
    /// the port may come from another process's broker that took the port first (ours then
    /// refuses to start, and `start` tries another port).
    fn wait_until_ready(&mut self) -> Result<(), Startup> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_error = String::from("not tried");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait on ringmq") {
                return Err(Startup::Exited(status));
            }
            if !self.holds_port() {
                last_error = String::from("its listeners are not bound yet");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match RawClient::try_connect(self.addr(), &unique_id("ready"), Duration::from_secs(2)) {
                Ok(mut client) => {
                    client.send(&Packet::Disconnect);
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Startup::TimedOut(last_error))
    }

    /// Whether the runtime's "starting" line, logged once its listeners are bound, lists
    /// this broker's port (text or JSON log format: both show the addresses' Debug form).
    fn holds_port(&self) -> bool {
        let log = self.log.lock().unwrap_or_else(|poison| poison.into_inner());
        let bound = format!("127.0.0.1:{}", self.port);
        String::from_utf8_lossy(&log).lines().any(|line| {
            line.contains("starting")
                && line.contains("addrs")
                && line.match_indices(&bound).any(|(at, _)| {
                    !line[at + bound.len()..].starts_with(|next: char| next.is_ascii_digit())
                })
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's standard error so far, its last [`LOG_TAIL_BYTES`].
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|poison| poison.into_inner());
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// How many times `needle` occurs in the broker's standard error so far.
    pub fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap_or_else(|poison| poison.into_inner());
        String::from_utf8_lossy(&log).matches(needle).count()
    }

    /// Waits up to `timeout` until `needle` occurs `times` times in the broker's standard
    /// error (start it with `--log-level debug` for the per-connection lines); false if not.
    pub fn wait_for_log(&self, needle: &str, times: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < times {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the broker process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: signals our own child, which has not been reaped (we hold `child`).
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({signal})");
    }

    /// Panics (with the log) if the broker process has exited: a test that saw a client
    /// misbehave should also see the broker still up.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait on ringmq") {
            panic!("ringmq exited with {status}; log:\n{}", self.log_tail());
        }
    }

    /// Stops the broker with SIGTERM and returns its whole log, which then ends with each
    /// worker's counters; panics unless it exits with status 0 within five seconds.
    pub fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: signals our own child, which has not been reaped (we hold `child`).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill(SIGTERM)");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait on ringmq") {
                break status;
            }
            assert!(Instant::now() < deadline, "ringmq still running 5 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.log_reader.take() {
            reader.join().expect("the log reader does not panic");
        }
        let log =
            String::from_utf8_lossy(&self.log.lock().unwrap_or_else(|poison| poison.into_inner()))
                .into_owned();
        assert!(status.success(), "ringmq exited with {status}; log:\n{log}");
        log
    }

    /// A raw MQTT client connected (CONNECT answered with CONNACK 0) under `client_id`.
    pub fn raw_client(&self, client_id: &str) -> RawClient {
        self.raw_client_with(ConnectOptions::new(client_id))
    }

    /// A raw MQTT client connected with `options` (CONNECT answered with CONNACK 0).
    pub fn raw_client_with(&self, options: ConnectOptions) -> RawClient {
        let mut client = RawClient::open(self.addr());
        let connack = client.connect(options);
        assert!(connack.code == ringmq::protocol::ConnectReturnCode::Accepted, "{connack:?}");
        client
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let pid = self.child.id();
        if std::thread::panicking() {
            // SIGTERM first, so the log ends with each worker's counters, then show it.
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: signals our own child, which has not been reaped (we hold `child`).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Child::kill is SIGKILL to this child's PID (a no-op error if it already exited).
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- ringmq (pid {pid}, port {}) log tail ----\n{}",
                self.port,
                self.log_tail()
            );
        }
    }
}

enum Startup {
    Exited(std::process::ExitStatus),
    TimedOut(String),
}

/// A loopback port that the kernel just handed out and that no other broker of this test
/// process has been given. The broker binds with SO_REUSEPORT, so two brokers on one port
/// would silently share connections; handing each port out once rules that out here.
/// Waits for a client program we started (`name` for messages) to finish within `timeout`,
/// killing it by PID otherwise, and returns its output.
pub fn wait_bounded(mut child: Child, name: &str, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait on a child").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{name} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the output")
}

pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|poison| poison.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind an ephemeral loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// A client id unique within this test process (and most likely across runs): the broker
/// keeps persistent sessions by id, and tests must not see each other's.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The fields of a CONNECT a test varies.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub will: Option<LastWill>,
}

impl ConnectOptions {
    pub fn new(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            clean_session: true,
            keep_alive_secs: 30,
            will: None,
        }
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: QoS) -> Self {
        let topic =
            TopicName::from_bytes(Bytes::copy_from_slice(topic.as_bytes())).expect("valid topic");
        self.will =
            Some(LastWill { topic, payload: Bytes::copy_from_slice(payload), qos, retain: false });
        self
    }

    pub fn keep_alive_secs(mut self, secs: u16) -> Self {
        self.keep_alive_secs = secs;
        self
    }

    fn to_packet(&self) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_session: self.clean_session,
            keep_alive_secs: self.keep_alive_secs,
            client_id: Utf8Bytes::new(Bytes::copy_from_slice(self.client_id.as_bytes()))
                .expect("UTF-8"),
            will: self.will.clone(),
            username: None,
            password: None,
        }))
    }
}

/// An MQTT client over a plain `TcpStream`, encoding and decoding with `ringmq::protocol`.
/// Dropping it closes the socket without DISCONNECT, like a crashed client.
pub struct RawClient {
    stream: TcpStream,
    input: BytesMut,
    next_packet_id: u16,
}

/// How long [`RawClient::receive`] waits for a packet.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The read timeout of one `read` call: the granularity of every deadline in `RawClient`.
const READ_SLICE: Duration = Duration::from_millis(50);

/// What one bounded read gave.
enum Read1 {
    Bytes,
    Closed,
    Nothing,
}

impl RawClient {
    pub fn open(addr: SocketAddr) -> Self {
        Self::try_open(addr, Duration::from_secs(2)).unwrap_or_else(|error| panic!("{error}"))
    }

    fn try_open(addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|error| format!("connect {addr}: {error}"))?;
        stream.set_read_timeout(Some(READ_SLICE)).map_err(|error| error.to_string())?;
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|error| error.to_string())?;
        stream.set_nodelay(true).map_err(|error| error.to_string())?;
        Ok(Self { stream, input: BytesMut::new(), next_packet_id: 1 })
    }

    /// Opens a connection and completes CONNECT/CONNACK, or says why not (for the start-up
    /// poll, which must not panic on a broker that is not listening yet).
    fn try_connect(addr: SocketAddr, client_id: &str, timeout: Duration) -> Result<Self, String> {
        let mut client = Self::try_open(addr, timeout)?;
        let mut out = BytesMut::new();
        encode(&ConnectOptions::new(client_id).to_packet(), &mut out);
        client.stream.write_all(&out).map_err(|error| format!("write CONNECT: {error}"))?;
        match client.try_receive(timeout)? {
            Some(Packet::Connack(connack))
                if connack.code == ringmq::protocol::ConnectReturnCode::Accepted =>
            {
                Ok(client)
            }
            Some(other) => Err(format!("expected CONNACK 0, got {other:?}")),
            None => Err("no CONNACK".to_owned()),
        }
    }

    /// Sends CONNECT and returns the CONNACK ([MQTT-3.2.0-1]: it is the first packet back).
    pub fn connect(&mut self, options: ConnectOptions) -> Connack {
        self.send(&options.to_packet());
        match self.receive() {
            Packet::Connack(connack) => connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, &mut out);
        self.send_bytes(&out);
    }

    /// Writes bytes as they are: for malformed input.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// Subscribes to each filter at its QoS and checks the SUBACK grants them
    /// ([MQTT-3.8.4-1], [MQTT-3.9.3-1]: one return code per filter, in order).
    pub fn subscribe(&mut self, filters: &[(&str, QoS)]) {
        let packet_id = self.packet_id();
        let filters: Vec<(TopicFilter, QoS)> = filters
            .iter()
            .map(|(text, qos)| {
                let filter =
                    Utf8Bytes::new(Bytes::copy_from_slice(text.as_bytes())).expect("UTF-8");
                (TopicFilter::new(filter).expect("valid filter"), *qos)
            })
            .collect();
        let granted: Vec<SubackCode> =
            filters.iter().map(|(_, qos)| SubackCode::Granted(*qos)).collect();
        self.send(&Packet::Subscribe(Subscribe { packet_id, filters }));
        match self.receive() {
            Packet::Suback(suback) => {
                assert_eq!(suback.packet_id, packet_id);
                assert_eq!(suback.return_codes, granted);
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 0 (nothing comes back to wait for).
    pub fn publish_qos0(&mut self, topic: &str, payload: &[u8]) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::from_bytes(Bytes::copy_from_slice(topic.as_bytes()))
                .expect("valid topic"),
            packet_id: None,
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    fn packet_id(&mut self) -> PacketId {
        let id = PacketId::new(self.next_packet_id).expect("packet ids start at 1 and skip 0");
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The next packet from the broker; panics after [`RECEIVE_TIMEOUT`] or on a close.
    pub fn receive(&mut self) -> Packet {
        match self.try_receive(RECEIVE_TIMEOUT) {
            Ok(Some(packet)) => packet,
            Ok(None) => panic!("no packet from the broker within {RECEIVE_TIMEOUT:?}"),
            Err(error) => panic!("{error}"),
        }
    }

    /// The next packet within `timeout`, `None` if none came, `Err` if the broker closed
    /// the connection or sent something that is not MQTT.
    pub fn try_receive(&mut self, timeout: Duration) -> Result<Option<Packet>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = decode(&mut self.input, usize::MAX)
                .map_err(|error| format!("broker sent invalid MQTT: {error:?}"))?
            {
                return Ok(Some(packet));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            match self.read_once()? {
                Read1::Closed => return Err("the broker closed the connection".to_owned()),
                Read1::Bytes | Read1::Nothing => {}
            }
        }
    }

    /// Waits up to `timeout` for the broker to close the connection, discarding any packets
    /// before it; returns how long that took, or `None` if it stayed open.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Duration> {
        let began = Instant::now();
        while began.elapsed() < timeout {
            match self.read_once() {
                Ok(Read1::Closed) | Err(_) => return Some(began.elapsed()),
                Ok(Read1::Bytes | Read1::Nothing) => {}
            }
        }
        None
    }

    fn read_once(&mut self) -> Result<Read1, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(Read1::Closed),
            Ok(len) => {
                self.input.extend_from_slice(&chunk[..len]);
                Ok(Read1::Bytes)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(Read1::Nothing)
            }
            // A reset is the broker closing too (it may close with unread input pending).
            Err(error) if error.kind() == ErrorKind::ConnectionReset => Ok(Read1::Closed),
            Err(error) => Err(format!("read: {error}")),
        }
    }
}
