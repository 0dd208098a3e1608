//! Operations: the HTTP listener serving `/metrics` (Prometheus), the admin API
//! (`/api/v1/...`, see `docs/openapi.yaml`) and the live dashboard (`/dashboard`).
//!
//! Placement (see docs/ARCHITECTURE.md, "Operations"): two threads of their own, never a
//! worker's ring. `ringmq-http` accepts and answers one request at a time; `ringmq-stats`
//! samples the workers' statistics blocks once a second into the dashboard's history. Both run
//! at a lower priority (nice 10) and unpinned, so under load the scheduler favours the workers.
//! They touch the workers only through [`crate::runtime::ops_link`]: `Relaxed` loads of the
//! blocks each worker alone writes, and bounded control queues whose answers the HTTP thread
//! waits for. A worker never waits for, or locks anything with, these threads.
//!
//! Invariant: with `http_port = 0` (the default) nothing here runs.

pub mod admin;
pub mod config;
pub mod http;
pub mod metrics;
pub mod token;

pub use config::OpsConfig;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::runtime::ops_link::{lower_thread_priority, OpsLink};
use admin::Admin;
use http::{ReadError, Request, Response};
use metrics::{History, ProcessFigures, Sample};

/// The dashboard page (static; it polls the admin API).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// How often the history gets a sample.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// The running operations threads; stopped and joined on drop.
#[derive(Debug)]
pub struct OpsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    reload: AtomicBool,
}

/// The HTTP listener, bound before the workers start (so a port in use, or an unreadable
/// token file, stops the broker before it sizes anything), with the token it will check.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    token: token::Token,
}

impl OpsServer {
    /// Binds the listener and reads the token; `None` when `http_port` is 0.
    pub fn bind(config: &OpsConfig) -> anyhow::Result<Option<Bound>> {
        let Some(addr) = config.http_addr() else { return Ok(None) };
        let listener = TcpListener::bind(addr)
            .map_err(|error| anyhow::anyhow!("binding the HTTP listener on {addr}: {error}"))?;
        let token = token::Token::load(config).map_err(|error| anyhow::anyhow!(error))?;
        Ok(Some(Bound { listener, token }))
    }

    /// Starts the threads on a bound listener, once the workers run.
    pub fn start(bound: Bound, config: &OpsConfig, link: OpsLink) -> anyhow::Result<Self> {
        let Bound { listener, token } = bound;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let history = Arc::new(Mutex::new(History::default()));
        let blocks = link.blocks.clone();
        let epoch = link.epoch;
        let admin =
            Admin { link, token, history: Arc::clone(&history), list_max: config.admin_list_max };
        let http_shared = Arc::clone(&shared);
        let http = std::thread::Builder::new()
            .name("ringmq-http".to_owned())
            .spawn(move || serve(&listener, admin, &http_shared, epoch))?;
        let sampler_shared = Arc::clone(&shared);
        let sampler = std::thread::Builder::new()
            .name("ringmq-stats".to_owned())
            .spawn(move || sample(&blocks, &history, &sampler_shared))?;
        tracing::info!(%addr, admin = config.admin_enabled(), "HTTP listener: /metrics, /api/v1, /dashboard");
        Ok(Self { addr, shared, threads: vec![http, sampler] })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the HTTP thread to read the admin token file again (SIGHUP).
    pub fn request_reload(&self) {
        self.shared.reload.store(true, Ordering::Release);
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Ends the HTTP thread's blocking accept; the connection itself is not answered.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn sample(
    blocks: &[Arc<crate::runtime::export::StatsBlock>],
    history: &Mutex<History>,
    shared: &Shared,
) {
    lower_thread_priority();
    while !shared.stop.load(Ordering::Acquire) {
        let values: Vec<_> = blocks.iter().map(|block| block.read()).collect();
        let sample = Sample::take(&values, metrics::resident_bytes());
        history.lock().unwrap_or_else(PoisonError::into_inner).push(sample, Instant::now());
        std::thread::park_timeout(SAMPLE_PERIOD);
    }
}

fn serve(listener: &TcpListener, mut admin: Admin, shared: &Shared, epoch: Instant) {
    lower_thread_priority();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        if shared.reload.swap(false, Ordering::AcqRel) {
            admin.token.reload();
        }
        let _ = stream.set_read_timeout(Some(http::IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(http::IO_TIMEOUT));
        let response = match http::read_request(&mut stream) {
            Ok(request) => route(&request, &mut admin, epoch),
            Err(ReadError::Gone) => continue,
            Err(ReadError::Bad(status, why)) => Response::text(status, why),
        };
        let _ = http::write_response(&mut stream, &response);
    }
}

fn route(request: &Request, admin: &mut Admin, epoch: Instant) -> Response {
    let method = request.method.as_str();
    match (method, request.path.as_str()) {
        ("GET", "/metrics") => {
            let values = metrics::read_all(&admin.link);
            let connects_per_second =
                admin.history.lock().unwrap_or_else(PoisonError::into_inner).connects_per_second();
            let process = ProcessFigures {
                resident_bytes: metrics::resident_bytes(),
                connects_per_second,
                uptime_seconds: epoch.elapsed().as_secs_f64(),
                workers: values.len(),
            };
            let body = metrics::render(&values, &process);
            Response::new(200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/") => {
            let mut response = Response::text(302, "see /dashboard");
            response.headers.push(("Location", "/dashboard".to_owned()));
            response
        }
        ("GET", "/dashboard") => Response::new(200, "text/html; charset=utf-8", DASHBOARD_HTML),
        (_, path) if path.starts_with("/api/") => admin.handle(request),
        ("GET", _) => Response::text(404, "not found: /metrics, /dashboard, /api/v1/..."),
        _ => Response::text(405, "method not allowed"),
    }
}
