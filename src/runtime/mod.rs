//! The io_uring runtime: pinned worker threads, one ring each, moving bytes and time between
//! the kernel and the sans-IO broker core.
//!
//! [`run`] is the binary's entry point: it checks the kernel ([`probe`]), binds the listeners,
//! starts one [`worker::Worker`] per configured worker and waits for SIGINT/SIGTERM.
//! [`start`] does the same without touching signals, for tests and embedders.
//!
//! Map: `worker` (the loop and its phases), `events` (completion handlers), `output` (broker
//! actions, sends, closing), `conn` (slot table and close steps), `send` (the boxed sendmsg
//! state), `bufring` (provided receive buffers), `uring` (the ring), `user_data`, `listener`,
//! `signals`, `probe`, `peers` (the link to other workers), `rings` (a worker's further
//! rings, for more connections than one file table holds), `peer_name` (peer addresses),
//! `reload` (SIGHUP). `unsafe` lives only in these files.
//!
//! Shutdown: SIGINT/SIGTERM stop accepting, close every connection (output already taken gets
//! a short time to leave) and exit 0 within a second. Wills ARE published at shutdown
//! (`Broker::handle_shutdown`), as Mosquitto does (it sends every client's will before it
//! exits): a connected subscriber receives them if its output leaves before the stop's flush
//! deadline; nothing is persisted across the restart.

pub mod bufring;
pub mod config;
pub mod conn;
mod events;
pub mod export;
mod handoff;
pub mod journal;
mod layers;
pub mod listener;
pub mod mesh;
pub mod msg_ring;
pub mod ops_link;
mod output;
mod pacing;
mod peer_name;
pub mod peers;
pub mod probe;
pub mod reload;
mod rings;
pub mod send;
pub mod signals;
pub mod spsc;
pub mod uring;
pub mod user_data;
pub mod verify;
pub mod worker;

#[cfg(test)]
mod starve_tests;
#[cfg(test)]
mod tests;

pub use config::RuntimeConfig;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::broker::BrokerConfig;
use crate::persist::store::NextEpoch;
use crate::transport::{ListenerKind, Transports};
use signals::Stopper;
use worker::{Worker, WorkerCounters, WorkerSetup};

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(runtime: RuntimeConfig, broker: BrokerConfig) -> anyhow::Result<()> {
    run_with(runtime, broker, &StartOptions::default(), |_| Ok(()))
}

/// Options of [`start_with`] beyond the two layer configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOptions {
    /// Depth of each worker's control queue (`ops_link`), the `admin_queue_depth` setting.
    pub control_queue_depth: usize,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self { control_queue_depth: 16 }
    }
}

/// [`run`], calling `attach` once the workers run (e.g. to start the operations thread with
/// [`Running::take_ops_link`]); what it returns is dropped after the workers stopped.
pub fn run_with<G>(
    runtime: RuntimeConfig,
    broker: BrokerConfig,
    options: &StartOptions,
    attach: impl FnOnce(&mut Running) -> anyhow::Result<G>,
) -> anyhow::Result<()> {
    // Before any thread exists, so every thread (workers, and the operations thread `attach`
    // may start) inherits the mask and only `sigwait` sees them.
    signals::block()?;
    let mut running = start_with(runtime, broker, options)?;
    let attached = match attach(&mut running) {
        Ok(attached) => attached,
        Err(error) => {
            running.stop();
            let _ = running.join();
            return Err(error);
        }
    };
    // Signals, and a look every so often for a worker that ended on its own (a failure): then
    // the others are stopped too and its error is returned.
    loop {
        match signals::wait_for_signal(Duration::from_millis(200))? {
            Some(signals::Signal::Stop(signal)) => {
                tracing::info!(signal, "stopping");
                break;
            }
            Some(signals::Signal::Reload) => {
                tracing::info!("SIGHUP: reloading");
                running.reload();
            }
            None => {}
        }
        if running.threads.iter().any(JoinHandle::is_finished) {
            tracing::error!("a worker ended unexpectedly: stopping the others");
            break;
        }
    }
    running.stop();
    running.join()?;
    drop(attached);
    Ok(())
}

/// A started runtime.
#[derive(Debug)]
pub struct Running {
    addrs: Vec<SocketAddr>,
    listener_kinds: Vec<ListenerKind>,
    transports: Arc<Transports>,
    stopper: Stopper,
    threads: Vec<JoinHandle<anyhow::Result<WorkerCounters>>>,
    reloader: reload::Reloader,
    verifiers: verify::VerifierPool,
    ops: Option<ops_link::OpsLink>,
}

impl Running {
    /// Every listen address (plain MQTT first, then TLS, WebSocket, WSS, in the order
    /// configured), with port 0 resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The listen addresses that speak `kind`, with port 0 resolved.
    pub fn addrs_of(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        let kinds = self.listener_kinds.iter();
        self.addrs.iter().zip(kinds).filter(|(_, k)| **k == kind).map(|(a, _)| *a).collect()
    }

    /// The shared transport configuration (e.g. to reload the certificates).
    pub fn transports(&self) -> &Arc<Transports> {
        &self.transports
    }

    /// The statistics blocks and control queues of the workers, for the operations thread;
    /// `Some` once.
    pub fn take_ops_link(&mut self) -> Option<ops_link::OpsLink> {
        self.ops.take()
    }

    /// Asks every worker to stop (see the module documentation); returns at once.
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Adds a source to what SIGHUP reloads (see `reload.rs`).
    pub fn add_reload_source(&mut self, source: Box<dyn reload::ReloadSource>) {
        self.reloader.add(source);
    }

    /// Reloads every reloadable file (what SIGHUP does): each source that loads reaches every
    /// worker, which swaps it in between two loop turns; a source that fails changes nothing.
    /// Returns at once, before the workers have applied it.
    pub fn reload(&mut self) -> Vec<reload::ReloadReport> {
        let stopper = &self.stopper;
        self.reloader.reload(|value| stopper.deliver(&value))
    }

    /// Waits for every worker to end; returns their counters, or the first failure.
    pub fn join(self) -> anyhow::Result<Vec<WorkerCounters>> {
        let mut counters = Vec::with_capacity(self.threads.len());
        let mut failure = None;
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(worker)) => counters.push(worker),
                Ok(Err(error)) => failure = failure.or(Some(error)),
                Err(_) => failure = failure.or(Some(anyhow::anyhow!("a worker panicked"))),
            }
        }
        // The workers' senders are gone with them: the verifiers end.
        self.verifiers.join();
        failure.map_or(Ok(counters), Err)
    }
}

/// Checks the kernel, binds the listeners and starts the workers; returns once every worker
/// has built its state (or the first failure, after stopping the others).
pub fn start(runtime: RuntimeConfig, broker: BrokerConfig) -> anyhow::Result<Running> {
    start_with(runtime, broker, &StartOptions::default())
}

/// [`start`] with options.
pub fn start_with(
    runtime: RuntimeConfig,
    broker: BrokerConfig,
    options: &StartOptions,
) -> anyhow::Result<Running> {
    runtime.validate().map_err(|error| anyhow::anyhow!("runtime configuration: {error}"))?;
    // On a thread of its own, so the caller's thread gets no io_uring task context (whose
    // task work would interrupt its blocking calls) from the throwaway rings.
    let msg_ring = runtime.workers > 1;
    let support = std::thread::scope(|scope| scope.spawn(|| probe::probe(msg_ring)).join())
        .map_err(|_| anyhow::anyhow!("the kernel probe panicked"))??;
    raise_descriptor_limit(runtime.file_table_slots)?;
    let (auth_source, auth) = reload::AuthSource::load_initial(broker.auth_files())
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    tracing::info!("auth: {auth}");
    let transports = Arc::new(
        Transports::new(runtime.uses_tls().then_some(&runtime.tls), &runtime.ws_path)
            .map_err(|error| anyhow::anyhow!("TLS: {error}"))?,
    );
    let mut sources: Vec<Box<dyn reload::ReloadSource>> = vec![Box::new(auth_source)];
    if transports.tls.is_some() {
        sources.push(Box::new(layers::CertificateSource(Arc::clone(&transports))));
    }
    let reloader = reload::Reloader::new(sources);
    let all_listeners = runtime.all_listeners();
    let listener_kinds: Vec<ListenerKind> = all_listeners.iter().map(|(_, kind)| *kind).collect();
    let bound = RuntimeConfig {
        listeners: all_listeners.iter().map(|(addr, _)| *addr).collect(),
        ..runtime.clone()
    };
    let listeners = listener::bind_all(&bound)?;
    let cpus = allowed_cpus();
    tracing::info!(workers = runtime.workers, ?cpus, addrs = ?listeners.addrs, taskrun = ?support.mode, "starting");
    let stopper = Stopper::new(runtime.workers)?;
    let watches = (0..runtime.workers).map(|index| stopper.watch(index)).collect();
    let verifiers = verify::VerifierPool::start(
        runtime.auth_verify_threads,
        runtime.auth_verify_queue_max,
        watches,
    )?;
    let failure_limiter = verify::shared_failure_limiter(&broker)?;
    let wakers = (0..runtime.workers).map(|worker| stopper.waker(worker)).collect();
    let (ops_link, worker_ops) =
        ops_link::build(runtime.workers, options.control_queue_depth, wakers);
    let mut worker_ops = worker_ops.into_iter();
    let connections = Arc::new(AtomicUsize::new(0));
    let epoch = ops_link.epoch;
    let workers = u16::try_from(runtime.workers)?;
    let (mut journals, next_epoch) = prepare_persistence(&runtime, workers)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(runtime.workers);
    let gates = Arc::new(Gates::new(runtime.workers));
    let mut meshes: Vec<Option<mesh::MeshEnd<peers::MeshItem>>> = if runtime.workers > 1 {
        mesh::build(runtime.workers, mesh::MeshLimits::from_config(&runtime))
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    for (index, sockets) in listeners.per_worker.into_iter().enumerate() {
        let setup = WorkerSetup {
            index: u16::try_from(index)?,
            workers,
            cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            config: runtime.clone(),
            broker: broker.clone(),
            listeners: sockets,
            listener_kinds: listener_kinds.clone(),
            transports: Arc::clone(&transports),
            stop: stopper.watch(index),
            connections: Arc::clone(&connections),
            epoch,
            mesh: meshes[index].take(),
            journal: journals[index].take(),
            auth: Arc::clone(&auth),
            failure_limiter: Arc::clone(&failure_limiter),
            verifier: verifiers.sender(),
            ops: worker_ops.next().expect("one ops side per worker"),
        };
        let ready = ready_tx.clone();
        let gates = Arc::clone(&gates);
        let thread = std::thread::Builder::new()
            .name(format!("ringmq-w{index}"))
            .spawn(move || worker_main(setup, &ready, &gates))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let running = Running {
        addrs: listeners.addrs,
        listener_kinds,
        transports,
        stopper,
        threads,
        ops: Some(ops_link),
        reloader,
        verifiers,
    };
    for _ in 0..runtime.workers {
        // A closed channel means a worker died before reporting; join() says how.
        let ready =
            ready_rx.recv().unwrap_or_else(|_| Err("a worker ended during start-up".to_owned()));
        if let Err(error) = ready {
            gates.open(false);
            running.stop();
            let joined = running.join();
            return Err(
                anyhow::anyhow!("{error}").context(format!("starting the workers ({joined:?})"))
            );
        }
    }
    if let Some(epoch) = &next_epoch {
        // Every worker's first file is fsynced: the new epoch becomes the one to recover.
        if let Err(error) = epoch.commit() {
            gates.open(false);
            running.stop();
            let joined = running.join();
            return Err(anyhow::anyhow!(
                "persistence: committing {}: {error} ({joined:?})",
                epoch.dir.display()
            ));
        }
    }
    // Every ring fd is registered in the mesh now: the workers may ring each other.
    gates.open(true);
    if let Some(epoch) = &next_epoch {
        // On this thread, while the workers serve: deleting old journals can take a while.
        if let Err(error) = epoch.remove_older() {
            tracing::warn!(%error, "persistence: could not delete the older journal epochs");
        }
    }
    Ok(running)
}

/// Persistence at start-up: recovers the newest epoch, splits it among the workers and
/// prepares the next epoch, into which each worker writes its first snapshot.
fn prepare_persistence(
    runtime: &RuntimeConfig,
    workers: u16,
) -> anyhow::Result<(Vec<Option<journal::JournalSetup>>, Option<NextEpoch>)> {
    let Some(config) = &runtime.persistence else {
        return Ok(((0..workers).map(|_| None).collect(), None));
    };
    let recovered = crate::persist::store::recover(&config.dir).map_err(|error| {
        anyhow::anyhow!("persistence: reading {}: {error}", config.dir.display())
    })?;
    let epoch = NextEpoch::create(&config.dir, recovered.epoch).map_err(|error| {
        anyhow::anyhow!("persistence: preparing {}: {error}", config.dir.display())
    })?;
    let parts = crate::persist::store::partition(recovered.image, workers, recovered.epoch_workers);
    let setups = parts
        .into_iter()
        .map(|image| {
            Some(journal::JournalSetup { config: config.clone(), image, epoch: epoch.clone() })
        })
        .collect();
    Ok((setups, Some(epoch)))
}

/// Start-up and exit rendezvous of the workers: none runs before every ring is registered in
/// the mesh (a doorbell needs its target's fd), and none closes its ring while another may
/// still ring it.
#[derive(Debug)]
struct Gates {
    workers: usize,
    /// `None` until start-up is decided: `Some(true)` run, `Some(false)` give up.
    go: Mutex<Option<bool>>,
    exited: Mutex<usize>,
    changed: Condvar,
}

/// How long a stopped worker waits for the others before closing its ring anyway (a worker
/// that panicked never arrives).
const EXIT_WAIT: Duration = Duration::from_secs(1);

impl Gates {
    fn new(workers: usize) -> Self {
        Self { workers, go: Mutex::new(None), exited: Mutex::new(0), changed: Condvar::new() }
    }

    fn open(&self, run: bool) {
        *self.go.lock().unwrap_or_else(PoisonError::into_inner) = Some(run);
        self.changed.notify_all();
    }

    fn wait_for_go(&self) -> bool {
        let go = self.go.lock().unwrap_or_else(PoisonError::into_inner);
        let go =
            self.changed.wait_while(go, |go| go.is_none()).unwrap_or_else(PoisonError::into_inner);
        go.unwrap_or(false)
    }

    fn exit(&self) {
        let mut exited = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        *exited += 1;
        self.changed.notify_all();
        let deadline = Instant::now() + EXIT_WAIT;
        while *exited < self.workers {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            exited =
                self.changed.wait_timeout(exited, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// A worker thread: pin, build, report readiness, loop.
fn worker_main(
    setup: WorkerSetup,
    ready: &mpsc::Sender<Result<(), String>>,
    gates: &Gates,
) -> anyhow::Result<WorkerCounters> {
    let index = setup.index;
    // Pin before allocating, so the worker's memory comes from its own core's node.
    if let Some(cpu) = setup.cpu {
        if let Err(error) = worker::pin(cpu) {
            tracing::warn!(worker = index, cpu, %error, "could not pin the worker");
        }
    }
    let mut worker = match Worker::new(setup) {
        Ok(worker) => worker,
        Err(error) => {
            let message = format!("worker {index}: {error:#}");
            // The receiver only goes away after start() returned; nothing to tell then.
            let _ = ready.send(Err(message.clone()));
            return Err(anyhow::anyhow!(message));
        }
    };
    let _ = ready.send(Ok(()));
    if !gates.wait_for_go() {
        return Ok(worker.counters.clone());
    }
    let result = worker.run();
    gates.exit();
    result?;
    Ok(worker.counters.clone())
}

/// The CPUs this process may run on, lowest first (empty if the kernel will not say).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills at most
    // `size_of` bytes of it, and CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..8 * std::mem::size_of::<libc::cpu_set_t>())
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Raises the soft descriptor limit to the hard one: the kernel caps each ring's direct file
/// table at RLIMIT_NOFILE, and connections live only there.
fn raise_descriptor_limit(file_table_slots: u32) -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit with soft <= hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    if u64::from(file_table_slots) > limit.rlim_cur {
        anyhow::bail!(
            "file_table_slots {file_table_slots} exceeds RLIMIT_NOFILE {} (the kernel's cap on a \
             ring's direct file table); lower it or raise the limit (ulimit -Hn)",
            limit.rlim_cur
        );
    }
    Ok(())
}
