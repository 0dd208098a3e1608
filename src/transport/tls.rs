//! TLS with rustls, sans-IO: the ring's received bytes go in through `read_tls` from a slice,
//! records come out of `write_tls` into a buffer that becomes the send's `Bytes`.
//!
//! [`TlsSource`] loads the certificate chain, the key and (for client certificates) the CA
//! file into a `rustls::ServerConfig`, shared by every worker. A reload builds a new one and
//! publishes it with a generation number; each worker compares the generation (one atomic
//! load) when it accepts a TLS connection and takes the new configuration only then, so the
//! message path never takes a lock and open connections keep the configuration they began
//! with. The crypto provider is `ring` (no C toolchain beyond cc, no NASM).

use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::{Received, TransportError};

/// Slices handed to rustls per vectored write.
const SLICES_PER_WRITE: usize = 64;

/// Where the certificates come from, and what is asked of clients (Mosquitto's keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate chain, leaf first.
    pub certfile: PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// PEM: the CAs that sign client certificates; empty = client certificates not asked for.
    pub cafile: PathBuf,
    /// Refuse a client without a valid certificate (needs `cafile`).
    pub require_certificate: bool,
    /// The client certificate's subject CN replaces the CONNECT's user name.
    pub use_identity_as_username: bool,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn read_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsSetupError + '_ {
    move |source| TlsSetupError::Read { path: path.to_owned(), source }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error(path))?;
    if certificates.is_empty() {
        return Err(TlsSetupError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

/// Builds the server configuration from the files, with the `ring` provider.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = if files.cafile.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for certificate in certificates(&files.cafile)? {
            roots.add(certificate)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if files.require_certificate {
            verifier.build()?
        } else {
            verifier.allow_unauthenticated().build()?
        };
        builder.with_client_cert_verifier(verifier)
    };
    let chain = certificates(&files.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&files.keyfile).map_err(read_error(&files.keyfile))?;
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

/// The TLS configuration every worker starts connections from, replaceable by a reload.
#[derive(Debug)]
pub struct TlsSource {
    files: TlsFiles,
    /// Bumped after each successful reload, once `current` holds the new configuration.
    generation: AtomicU64,
    current: Mutex<Arc<ServerConfig>>,
}

/// A worker's copy of the current configuration and the generation it was taken at.
#[derive(Debug)]
pub struct TlsCache {
    generation: u64,
    config: Arc<ServerConfig>,
}

impl TlsSource {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsSetupError> {
        let config = server_config(files)?;
        Ok(Self {
            files: files.clone(),
            generation: AtomicU64::new(0),
            current: Mutex::new(config),
        })
    }

    /// Reads the files again; on success new connections use them.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let config = server_config(&self.files)?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = config;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn cache(&self) -> TlsCache {
        let generation = self.generation.load(Ordering::Acquire);
        let config = Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner));
        TlsCache { generation, config }
    }

    /// The configuration for a new connection: the cached one unless a reload happened.
    pub fn current(&self, cache: &mut TlsCache) -> Arc<ServerConfig> {
        if self.generation.load(Ordering::Acquire) != cache.generation {
            *cache = self.cache();
        }
        Arc::clone(&cache.config)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// One connection's TLS state.
#[derive(Debug)]
pub struct TlsLayer {
    conn: ServerConnection,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TransportError> {
        let mut conn = ServerConnection::new(config)?;
        // The output is taken out right after each write, so rustls's own bound would only
        // ever cut a batch the broker already bounded (`outbuf_bytes_max`).
        conn.set_buffer_limit(None);
        Ok(Self { conn })
    }

    /// Decrypts `wire` and appends the plaintext to `plain`.
    pub fn receive(
        &mut self,
        mut wire: &[u8],
        plain: &mut BytesMut,
    ) -> Result<Received, TransportError> {
        let mut received = Received::default();
        while !wire.is_empty() {
            // Reading from a slice advances it; rustls takes at most what its buffer holds.
            let read = self.conn.read_tls(&mut wire)?;
            let state = self.conn.process_new_packets()?;
            let waiting = state.plaintext_bytes_to_read();
            received.peer_closed |= state.peer_has_closed();
            if waiting > 0 {
                let start = plain.len();
                plain.resize(start + waiting, 0);
                self.conn.reader().read_exact(&mut plain[start..])?;
            }
            if read == 0 {
                if received.peer_closed {
                    // After close_notify rustls takes nothing more; nothing more counts.
                    break;
                }
                return Err(TransportError::TlsIo(std::io::Error::other("TLS input refused")));
            }
        }
        Ok(received)
    }

    /// Encrypts `plain` (all of it) into TLS records, kept until [`Self::take_wire`].
    pub fn encrypt(&mut self, plain: &[Bytes]) -> Result<(), TransportError> {
        let (mut index, mut offset) = (0, 0);
        skip(plain, &mut index, &mut offset, 0);
        while index < plain.len() {
            let first = std::iter::once(&plain[index][offset..]);
            let rest = plain[index + 1..].iter().map(|bytes| &bytes[..]);
            let slices: smallvec::SmallVec<[IoSlice<'_>; SLICES_PER_WRITE]> =
                first.chain(rest).take(SLICES_PER_WRITE).map(IoSlice::new).collect();
            let written = self.conn.writer().write_vectored(&slices)?;
            if written == 0 {
                return Err(TransportError::TlsIo(std::io::ErrorKind::WriteZero.into()));
            }
            skip(plain, &mut index, &mut offset, written);
        }
        Ok(())
    }

    /// Appends every pending TLS record (handshake, alerts, data) to `out`, as one `Bytes`.
    pub fn take_wire(&mut self, out: &mut Vec<Bytes>) -> Result<(), TransportError> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut wire = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut wire)?;
        }
        out.push(Bytes::from(wire));
        Ok(())
    }

    /// The broker ends the session: queues a close_notify alert, sent with the next
    /// [`Self::take_wire`]. Only once the handshake is done (a failed handshake already queued
    /// its fatal alert, and rustls sends nothing after one).
    pub fn close(&mut self) {
        if !self.conn.is_handshaking() {
            self.conn.send_close_notify();
        }
    }

    /// The verified client certificate's subject common name, if there is one.
    pub fn identity(&self) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let common_name = certificate.subject().iter_common_name().next()?;
        common_name.as_str().ok().map(str::to_owned)
    }
}

/// Moves `(index, offset)` past `written` bytes of `plain`, then past empty buffers, so it
/// names the next byte to write (or the end).
fn skip(plain: &[Bytes], index: &mut usize, offset: &mut usize, mut written: usize) {
    while written > 0 {
        let rest = plain[*index].len() - *offset;
        if written < rest {
            *offset += written;
            return;
        }
        written -= rest;
        *index += 1;
        *offset = 0;
    }
    while *index < plain.len() && plain[*index].len() == *offset {
        *index += 1;
        *offset = 0;
    }
}
