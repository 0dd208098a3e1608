//! `ringmq-bench tls`: TLS handshakes per second and MQTT throughput over TLS, against any
//! broker's TLS listener; `--plain` runs the same against a plain listener for the baseline.
//!
//! Unlike the io_uring load generator, this mode uses blocking sockets on threads with rustls
//! (the same client for every broker, so the comparison is fair; the client's own crypto
//! shares the machine with the broker's, which the report states).
//! - `handshakes`: each thread loops: TCP connect, full TLS handshake (no resumption), CONNECT,
//!   CONNACK, DISCONNECT, close. Reports completed sessions per second and connect-to-CONNACK
//!   latency.
//! - `throughput`: `--threads` publishers send QoS 0 PUBLISHes as fast as the socket takes
//!   them to one topic each; one subscriber (`#` under the prefix) counts what arrives.
//!   Reports messages and MiB per second delivered to the subscriber.

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

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x30];
    remaining_length(2 + topic.len() + payload.len(), &mut packet);
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic.as_bytes());
    packet.extend_from_slice(payload);
    packet
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut packet = vec![0x82];
    remaining_length(2 + 2 + filter.len() + 1, &mut packet);
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    packet.extend_from_slice(filter.as_bytes());
    packet.push(0);
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

fn throughput(
    connector: &Arc<Connector>,
    args: &TlsArgs,
    duration: Duration,
) -> anyhow::Result<String> {
    let prefix = format!("tls-bench-{}", std::process::id());
    let mut subscriber = connector.connect()?;
    session(&mut *subscriber, &format!("{prefix}-sub"))?;
    subscriber.write_all(&subscribe_packet(&format!("{prefix}/#")))?;
    subscriber.flush()?;
    anyhow::ensure!(read_exactly(&mut *subscriber, 5)? == [0x90, 3, 0, 1, 0], "SUBACK");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..args.threads)
        .map(|index| {
            let (connector, stop, sent) =
                (Arc::clone(connector), Arc::clone(&stop), Arc::clone(&sent));
            let packet =
                publish_packet(&format!("{prefix}/{index}"), &vec![0x5a; args.payload_bytes]);
            let batch = packet.repeat(PUBLISHES_PER_WRITE);
            let client_id = format!("{prefix}-pub-{index}");
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut stream = connector.connect()?;
                session(&mut *stream, &client_id)?;
                while !stop.load(Ordering::Relaxed) {
                    stream.write_all(&batch)?;
                    sent.fetch_add(PUBLISHES_PER_WRITE as u64, Ordering::Relaxed);
                }
                stream.write_all(&[0xe0, 0])?;
                stream.flush()?;
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    let (received, bytes) = count_publishes(&mut *subscriber, start + duration)?;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.join().map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    Ok(format!(
        "\"payload_bytes\":{},\"publishers\":{},\"sent\":{},\"received\":{received},\
         \"msgs_per_sec\":{:.0},\"mib_per_sec\":{:.1}",
        args.payload_bytes,
        args.threads,
        sent.load(Ordering::Relaxed),
        received as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64
    ))
}

/// Reads PUBLISHes until `deadline`; returns how many arrived and their wire bytes.
fn count_publishes(stream: &mut dyn Stream, deadline: Instant) -> anyhow::Result<(u64, u64)> {
    let mut buffer = vec![0u8; 256 * 1024];
    let (mut filled, mut received, mut bytes) = (0usize, 0u64, 0u64);
    while Instant::now() < deadline {
        let read = stream.read(&mut buffer[filled..])?;
        anyhow::ensure!(read > 0, "the broker closed the subscriber");
        filled += read;
        let mut at = 0;
        while let Some(length) = packet_length(&buffer[at..filled]) {
            anyhow::ensure!(length <= buffer.len(), "a {length}-byte packet");
            if buffer[at] >> 4 == 3 {
                received += 1;
                bytes += length as u64;
            }
            at += length;
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
    }
    Ok((received, bytes))
}

/// The whole packet's length if `bytes` holds all of it.
fn packet_length(bytes: &[u8]) -> Option<usize> {
    let mut length = 0usize;
    for (index, byte) in bytes.iter().skip(1).take(4).enumerate() {
        length |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let total = 1 + index + 1 + length;
            return (bytes.len() >= total).then_some(total);
        }
    }
    None
}
