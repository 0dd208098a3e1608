//! `ringmq-bench tls`: TLS handshakes per second and MQTT throughput over TLS, against any
//! broker's TLS listener; `--plain` runs the same against a plain listener for the baseline.
//!
//! Unlike the io_uring load generator, this mode uses blocking sockets on threads with rustls
//! (the same client for every broker, so the comparison is fair; the client's own crypto
//! shares the machine with the broker's, which the report states).
//! - `handshakes`: each thread loops: TCP connect, full TLS handshake (no resumption), CONNECT,
//!   CONNACK, DISCONNECT, close. Reports completed sessions per second and connect-to-CONNACK
//!   latency.
//! - `throughput`: `--threads` publishers send PUBLISHes (QoS `--qos`, 1 by default) to one
//!   topic each, one subscriber (`#` under the prefix, same QoS, acknowledging) counts what
//!   arrives. End-to-end flow control: the publishers together keep at most `--window`
//!   PUBLISHes sent and not yet read by the subscriber (and at QoS 1 each publisher at most two
//!   batches unacknowledged), so every broker is measured delivering, never buffering or
//!   dropping what a publisher overran it with. Reports messages and MiB per second delivered
//!   to the subscriber.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// PUBLISHes written per `write` call by a throughput publisher.
const PUBLISHES_PER_WRITE: usize = 64;
/// How long a full end-to-end window may see no delivery before the run fails.
const STALL_LIMIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    Handshakes,
    Throughput,
}

#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    #[arg(value_enum)]
    pub mode: TlsMode,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// PEM CA file that signed the broker's certificate.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Name the broker's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Client certificate and key (PEM), for brokers that require one.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Plain TCP instead of TLS: the baseline.
    #[arg(long)]
    pub plain: bool,
    /// Handshaking threads, or publishers.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// PUBLISH payload size (throughput).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// QoS of the PUBLISHes and of the subscription (throughput): 0 or 1.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// End-to-end window (throughput): the publishers together keep at most this many
    /// PUBLISHes sent and not yet read by the subscriber, so a broker is measured delivering,
    /// not buffering or dropping.
    /// A broker that drops a message stalls the window: the run then fails (`STALL_LIMIT`).
    #[arg(long, default_value_t = 512)]
    pub window: u64,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Connector {
    args: TlsArgs,
    config: Option<Arc<ClientConfig>>,
}

impl Connector {
    fn new(args: &TlsArgs) -> anyhow::Result<Self> {
        if args.plain {
            return Ok(Self { args: args.clone(), config: None });
        }
        let cafile =
            args.cafile.as_ref().ok_or_else(|| anyhow::anyhow!("--cafile is needed for TLS"))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(cafile)? {
            roots.add(certificate?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        // Every handshake is a full one: resumption would measure the session cache instead.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self { args: args.clone(), config: Some(Arc::new(config)) })
    }

    /// A connected stream, with the TLS handshake done.
    fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.args.host.as_str(), self.args.port))?;
        tcp.set_nodelay(true)?;
        // A broker that stops answering fails the run instead of hanging it.
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let Some(config) = &self.config else { return Ok(Box::new(tcp)) };
        let name = ServerName::try_from(self.args.server_name.clone())?;
        let mut tls = StreamOwned::new(ClientConnection::new(Arc::clone(config), name)?, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Box::new(tls))
    }
}

/// CONNECT: MQTT 3.1.1, clean session, keepalive 60, the given client id.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut packet =
        vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    packet
}

fn remaining_length(mut length: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        out.push(if length > 0 { byte | 0x80 } else { byte });
        if length == 0 {
            return;
        }
    }
}

/// A PUBLISH at `qos` (0 or 1; at 1 with packet id 1, rewritten by the caller).
fn publish_packet(topic: &str, payload: &[u8], qos: u8) -> Vec<u8> {
    let id_bytes = if qos > 0 { 2 } else { 0 };
    let mut packet = vec![0x30 | (qos << 1)];
    remaining_length(2 + topic.len() + id_bytes + payload.len(), &mut packet);
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        packet.extend_from_slice(&[0, 1]);
    }
    packet.extend_from_slice(payload);
    packet
}

fn subscribe_packet(filter: &str, qos: u8) -> Vec<u8> {
    let mut packet = vec![0x82];
    remaining_length(2 + 2 + filter.len() + 1, &mut packet);
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    packet.extend_from_slice(filter.as_bytes());
    packet.push(qos);
    packet
}

/// Reads until `bytes` bytes arrived (CONNACK and SUBACK are fixed-size here).
fn read_exactly(stream: &mut dyn Stream, bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut buffer = vec![0; bytes];
    stream.read_exact(&mut buffer)?;
    Ok(buffer)
}

fn session(stream: &mut dyn Stream, client_id: &str) -> anyhow::Result<()> {
    stream.write_all(&connect_packet(client_id))?;
    stream.flush()?;
    let connack = read_exactly(stream, 4)?;
    anyhow::ensure!(connack == [0x20, 2, 0, 0], "CONNACK {connack:?}");
    Ok(())
}

/// Runs the mode; prints a line (or JSON) with the figures.
pub fn run(args: &TlsArgs, json: bool) -> anyhow::Result<()> {
    let connector = Arc::new(Connector::new(args)?);
    let duration = Duration::from_secs_f64(args.duration);
    let transport = if args.plain { "tcp" } else { "tls" };
    let summary = match args.mode {
        TlsMode::Handshakes => handshakes(&connector, args.threads, duration)?,
        TlsMode::Throughput => throughput(&connector, args, duration)?,
    };
    if json {
        println!("{{\"mode\":\"{:?}\",\"transport\":\"{transport}\",{summary}}}", args.mode);
    } else {
        println!("{:?} over {transport}: {summary}", args.mode);
    }
    Ok(())
}

fn handshakes(
    connector: &Arc<Connector>,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let connector = Arc::clone(connector);
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let mut latency = Histogram::<u64>::new(3)?;
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let mut stream = connector.connect()?;
                    session(&mut *stream, &format!("hs-{}-{thread}-{count}", std::process::id()))?;
                    latency.record(began.elapsed().as_micros() as u64)?;
                    stream.write_all(&[0xe0, 0])?;
                    stream.flush()?;
                    count += 1;
                }
                Ok(latency)
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    for worker in workers {
        let histogram = worker.join().map_err(|_| anyhow::anyhow!("a thread panicked"))??;
        latency.add(&histogram)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "\"sessions\":{},\"per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{}",
        latency.len(),
        latency.len() as f64 / secs,
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99)
    ))
}

/// What the publishers and the subscriber share in a throughput run.
struct Flow {
    stop: AtomicBool,
    /// PUBLISHes written by all publishers.
    sent: AtomicU64,
    /// PUBLISHes the subscriber has read.
    received: AtomicU64,
    /// Most PUBLISHes sent and not yet received (the end-to-end window).
    window: u64,
}

impl Flow {
    /// Waits until `batch` more PUBLISHes fit in the window; false when the run is over. A
    /// broker that dropped messages would hold the window full for ever: after
    /// [`STALL_LIMIT`] without a delivery that is an error saying so.
    fn wait_for_room(&self, batch: u64) -> anyhow::Result<bool> {
        let mut last = (self.received.load(Ordering::Relaxed), Instant::now());
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let received = self.received.load(Ordering::Relaxed);
            let in_flight = self.sent.load(Ordering::Relaxed).saturating_sub(received);
            if in_flight + batch <= self.window {
                return Ok(true);
            }
            if received != last.0 {
                last = (received, Instant::now());
            }
            anyhow::ensure!(
                last.1.elapsed() < STALL_LIMIT,
                "nothing delivered for {STALL_LIMIT:?} with {in_flight} PUBLISHes in flight: \
                 the broker dropped some (check its queue limits)"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn throughput(
    connector: &Arc<Connector>,
    args: &TlsArgs,
    duration: Duration,
) -> anyhow::Result<String> {
    anyhow::ensure!(args.qos <= 1, "--qos 0 or 1");
    let batch = PUBLISHES_PER_WRITE.min(args.window.max(1) as usize);
    let prefix = format!("tls-bench-{}", std::process::id());
    let mut subscriber = connector.connect()?;
    session(&mut *subscriber, &format!("{prefix}-sub"))?;
    subscriber.write_all(&subscribe_packet(&format!("{prefix}/#"), args.qos))?;
    subscriber.flush()?;
    let suback = read_exactly(&mut *subscriber, 5)?;
    anyhow::ensure!(suback == [0x90, 3, 0, 1, args.qos], "SUBACK {suback:?}");
    let flow = Arc::new(Flow {
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        window: args.window.max(batch as u64),
    });
    let publishers: Vec<_> = (0..args.threads)
        .map(|index| {
            let (connector, flow) = (Arc::clone(connector), Arc::clone(&flow));
            let publisher =
                Publisher::new(&format!("{prefix}/{index}"), args.payload_bytes, args.qos, batch);
            let client_id = format!("{prefix}-pub-{index}");
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut stream = connector.connect()?;
                session(&mut *stream, &client_id)?;
                publisher.run(&mut *stream, &flow)
            })
        })
        .collect();
    let start = Instant::now();
    let counted = count_publishes(&mut *subscriber, start + duration, &flow)
        .map_err(|error| error.context("the subscriber"));
    let secs = start.elapsed().as_secs_f64();
    flow.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for publisher in publishers {
        match publisher.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(format!("{error:#}")),
            Err(_) => failures.push("a publisher panicked".to_owned()),
        }
    }
    anyhow::ensure!(failures.is_empty(), "publishers failed: {failures:?}");
    let (received, bytes) = counted?;
    Ok(format!(
        "\"payload_bytes\":{},\"qos\":{},\"window\":{},\"publishers\":{},\"sent\":{},\
         \"received\":{received},\"msgs_per_sec\":{:.0},\"mib_per_sec\":{:.1}",
        args.payload_bytes,
        args.qos,
        flow.window,
        args.threads,
        flow.sent.load(Ordering::Relaxed),
        received as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64
    ))
}

/// One publishing connection: batches of PUBLISHes inside the end-to-end window; at QoS 1
/// each batch's PUBACKs are read before the batch after next is written, so at most two
/// batches are unacknowledged.
struct Publisher {
    /// `batch` PUBLISHes, their packet ids rewritten per batch at QoS 1.
    packets: Vec<u8>,
    /// Offsets of the packet ids in `packets` (QoS 1).
    id_offsets: Vec<usize>,
    batch: usize,
    next_id: u16,
}

impl Publisher {
    fn new(topic: &str, payload_bytes: usize, qos: u8, batch: usize) -> Self {
        let one = publish_packet(topic, &vec![0x5a; payload_bytes], qos);
        let id_offset = one.len() - payload_bytes - 2;
        let id_offsets = if qos == 1 {
            (0..batch).map(|index| index * one.len() + id_offset).collect()
        } else {
            Vec::new()
        };
        Self { packets: one.repeat(batch), id_offsets, batch, next_id: 1 }
    }

    fn run(mut self, stream: &mut dyn Stream, flow: &Flow) -> anyhow::Result<()> {
        let mut unacknowledged = 0usize;
        while flow.wait_for_room(self.batch as u64)? {
            for &offset in &self.id_offsets {
                self.packets[offset..offset + 2].copy_from_slice(&self.next_id.to_be_bytes());
                self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            }
            stream.write_all(&self.packets)?;
            flow.sent.fetch_add(self.batch as u64, Ordering::Relaxed);
            if !self.id_offsets.is_empty() {
                unacknowledged += self.batch;
                if unacknowledged > self.batch {
                    read_pubacks(stream, self.batch)?;
                    unacknowledged -= self.batch;
                }
            }
        }
        if unacknowledged > 0 {
            read_pubacks(stream, unacknowledged)?;
        }
        stream.write_all(&[0xe0, 0])?;
        stream.flush()?;
        Ok(())
    }
}

/// Reads `count` PUBACKs (4 bytes each).
fn read_pubacks(stream: &mut dyn Stream, count: usize) -> anyhow::Result<()> {
    let acks = read_exactly(stream, 4 * count)?;
    anyhow::ensure!(acks.chunks(4).all(|ack| ack[..2] == [0x40, 2]), "expected PUBACKs");
    Ok(())
}

/// Reads PUBLISHes until `deadline` (acknowledging QoS 1 ones), adding each read's count to
/// `flow.received`; returns how many arrived and their wire bytes.
fn count_publishes(
    stream: &mut dyn Stream,
    deadline: Instant,
    flow: &Flow,
) -> anyhow::Result<(u64, u64)> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut acks = Vec::with_capacity(4096);
    let (mut filled, mut received, mut bytes) = (0usize, 0u64, 0u64);
    while Instant::now() < deadline {
        let read = stream.read(&mut buffer[filled..])?;
        anyhow::ensure!(read > 0, "the broker closed the subscriber");
        filled += read;
        let mut at = 0;
        let before = received;
        while let Some((header, length)) = packet_length(&buffer[at..filled]) {
            anyhow::ensure!(length <= buffer.len(), "a {length}-byte packet");
            let packet = &buffer[at..at + length];
            if packet[0] >> 4 == 3 {
                received += 1;
                bytes += length as u64;
                if packet[0] & 0x06 == 0x02 {
                    let topic =
                        usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
                    let id = &packet[header + 2 + topic..header + 4 + topic];
                    acks.extend_from_slice(&[0x40, 2, id[0], id[1]]);
                }
            }
            at += length;
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
        if !acks.is_empty() {
            stream.write_all(&acks)?;
            stream.flush()?;
            acks.clear();
        }
        flow.received.fetch_add(received - before, Ordering::Relaxed);
    }
    Ok((received, bytes))
}

/// The fixed header's length and the whole packet's length, if `bytes` holds all of it.
fn packet_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (index, byte) in bytes.iter().skip(1).take(4).enumerate() {
        length |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let header = 1 + index + 1;
            let total = header + length;
            return (bytes.len() >= total).then_some((header, total));
        }
    }
    None
}
