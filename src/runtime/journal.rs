//! The worker's side of persistence: writing the broker's journal through the ring.
//!
//! One batch at a time: in phase 4 the worker takes the broker's pending records
//! (`Broker::take_journal`) and submits one `Write` at the end of its file; when it completes
//! (a short write is resubmitted from where it stopped) it submits an `Fsync` under the
//! `batch` policy; when that completes it reports the batch durable
//! (`Broker::handle_durable`), which releases the acknowledgements waiting for it. Records
//! produced meanwhile form the next batch (group commit). Under `interval` the file is fsynced
//! on its own every `fsync_interval_millis` while anything was written since; under `never`,
//! not at all. The steps are sequential, not linked SQEs, so a flush of a full SQ can never
//! split a chain.
//!
//! Compaction: when `compact_bytes` were appended after the file's snapshot, the worker creates the next generation's
//! file and fills it over many turns while the current file stays the one acknowledgements
//! wait for: a header, then, each turn that takes a batch, a copy of that batch and one slice
//! of the snapshot (`Broker::snapshot_slice`, a bounded number of session slots; taken when no
//! record is pending, so a slice shows the state after every copy before it). These are
//! written in the background (at most one write at a time, `COMPACTION_SLOT` in the
//! `user_data`). Once the last slice (`SnapshotEnd`) is in, the next batch goes to the new
//! file only, after the rest of the snapshot: written, fsynced, the directory fsynced, and
//! only then does it become the current file and the old one is deleted. A crash before that
//! leaves a new file without a durable `SnapshotEnd`, which recovery ignores for the old one
//! (complete: every acknowledged record is in it).
//!
//! Nothing blocks the loop: the new file is created (`openat`), the old one closed and deleted
//! (`close`, `unlinkat`) and the directory fsynced through the ring too (`Op::JournalFile`),
//! relative to the epoch directory's descriptor, opened at start-up (it follows the directory
//! across the epoch's rename). Only `Journal::start` blocks, before the loop runs: it writes
//! and fsyncs the worker's first file (the recovered state's snapshot).
//!
//! A failed write, fsync or file creation stops the process with a logged error: the
//! acknowledgements waiting for that batch are never sent (they are released only by the
//! batch's completion), so nothing acknowledged is lost, and a restart recovers the journal
//! up to its last complete batch. A failed close or delete of an old file is only logged.
//! Invariant: the kernel never reads a buffer we freed — a batch lives in `Journal::batch`
//! until its last completion, a path in `Journal::paths` until its operation completes, and a
//! journal dropped with either in flight leaks them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use io_uring::{opcode, types};

use super::uring::Completion;
use super::user_data::{Op, UserData};
use super::worker::Worker;
use crate::broker::snapshot::{SliceLimits, SnapshotCursor};
use crate::broker::{Broker, Millis};
use crate::persist::image::Image;
use crate::persist::store::{file_name, NextEpoch};
use crate::persist::{FsyncPolicy, PersistConfig};

/// A batch buffer larger than this is not kept for reuse (after a compaction's snapshot).
const SPARE_BYTES_MAX: usize = 4 << 20;
/// The most one `Write` submits (the SQE's length is 32 bits).
const WRITE_BYTES_MAX: usize = 1 << 30;
/// The `user_data` slot of a batch's operations and of a compaction's background writes.
const BATCH_SLOT: u32 = 0;
const COMPACTION_SLOT: u32 = 1;
/// The `user_data` slots of `Op::JournalFile` operations (the generation field carries the
/// token of the path the operation reads, if any).
const OPEN_SLOT: u32 = 0;
const UNLINK_SLOT: u32 = 1;
const CLOSE_SLOT: u32 = 2;

/// What a worker starts its journal from.
#[derive(Debug)]
pub struct JournalSetup {
    pub config: PersistConfig,
    /// This worker's share of the recovered state.
    pub image: Image,
    pub epoch: NextEpoch,
}

/// Journal activity, reported when the worker stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalCounters {
    pub batches: u64,
    pub bytes: u64,
    pub fsyncs: u64,
    pub short_writes: u64,
    pub compactions: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Write,
    SyncFile,
    SyncDir,
}

/// The next generation's file while a compaction fills it.
#[derive(Debug)]
struct Compaction {
    /// `None` until its `openat` completes (slices accumulate in `stream` meanwhile).
    file: Option<File>,
    generation: u64,
    cursor: SnapshotCursor,
    /// Bytes for the new file not yet submitted: the header, slices, copies of batches.
    stream: Vec<u8>,
    /// The background write in flight: its buffer and how much of it is written.
    writing: Option<(Vec<u8>, usize)>,
    /// Bytes the new file holds (completed writes).
    length: u64,
}

#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    written: usize,
    /// The broker's position that is durable once this batch is.
    position: u64,
    /// Where `buf` starts in its file.
    base: u64,
    stage: Stage,
    compaction: Option<Compaction>,
}

#[derive(Debug)]
pub struct Journal {
    file: File,
    /// The epoch directory: files are created and deleted relative to it; fsynced when a
    /// compaction's file becomes current.
    dir: File,
    /// Paths the kernel reads for an `openat`/`unlinkat` in flight, by token; and how many
    /// `Op::JournalFile` operations are in flight.
    paths: Vec<(u32, CString)>,
    next_path_token: u32,
    file_ops: u32,
    worker: u16,
    generation: u64,
    /// Bytes in the current file, and in its opening snapshot: a compaction starts once
    /// `compact_bytes` were appended after the snapshot (a state larger than `compact_bytes`
    /// is then not rewritten without pause).
    length: u64,
    snapshot_bytes: u64,
    config: PersistConfig,
    batch: Option<Batch>,
    /// A compaction filling the next generation's file in the background.
    compacting: Option<Box<Compaction>>,
    spare: Vec<u8>,
    /// Interval policy: written since the last fsync, and when the next one is due.
    unsynced: bool,
    sync_in_flight: bool,
    next_sync_at: Millis,
    pub counters: JournalCounters,
}

impl Journal {
    /// Restores the broker from `setup.image`, turns its persistence on, and writes its
    /// first file (a snapshot) into the new epoch. Blocking: runs before the loop.
    pub fn start(
        broker: &mut Broker,
        setup: JournalSetup,
        worker: u16,
        now: Millis,
    ) -> anyhow::Result<Self> {
        broker.enable_persistence(setup.config.pending_bytes_max, unix_millis_at(now));
        broker.restore(setup.image, now);
        let mut snapshot = Vec::new();
        let position = broker.take_snapshot(0, &mut snapshot);
        let file = setup.epoch.write_first_file(worker, &snapshot).map_err(|error| {
            anyhow::anyhow!("persistence: writing {}: {error}", setup.epoch.tmp.display())
        })?;
        // The `.tmp` directory becomes the epoch's by a rename: the descriptor follows it.
        let dir = File::open(&setup.epoch.tmp).map_err(|error| {
            anyhow::anyhow!("persistence: opening {}: {error}", setup.epoch.tmp.display())
        })?;
        broker.handle_durable(position, now);
        let length = snapshot.len() as u64;
        Ok(Self {
            file,
            dir,
            paths: Vec::new(),
            next_path_token: 0,
            file_ops: 0,
            worker,
            generation: 0,
            length,
            snapshot_bytes: length,
            config: setup.config,
            batch: None,
            compacting: None,
            spare: Vec::new(),
            unsynced: false,
            sync_in_flight: false,
            next_sync_at: now,
            counters: JournalCounters::default(),
        })
    }

    /// Nothing in flight.
    pub fn idle(&self) -> bool {
        let compaction_writing = self.compacting.as_ref().is_some_and(|c| c.writing.is_some());
        self.batch.is_none() && !self.sync_in_flight && !compaction_writing && self.file_ops == 0
    }

    /// When the interval policy's next fsync is due, if one is owed.
    pub fn deadline(&self) -> Option<Millis> {
        let owed = self.config.fsync == FsyncPolicy::Interval && self.unsynced;
        (owed && !self.sync_in_flight).then_some(self.next_sync_at)
    }

    fn batch_fd(&self) -> RawFd {
        match self.batch.as_ref().and_then(|batch| batch.compaction.as_ref()) {
            Some(compaction) => compaction_fd(compaction),
            None => self.file.as_raw_fd(),
        }
    }

    /// Keeps `path` until the operation that reads it completes; returns its token.
    fn keep_path(&mut self, path: CString) -> u32 {
        let token = self.next_path_token;
        self.next_path_token = self.next_path_token.wrapping_add(1);
        self.paths.push((token, path));
        token
    }

    fn release_path(&mut self, token: u32) {
        self.paths.retain(|(kept, _)| *kept != token);
    }
}

fn compaction_fd(compaction: &Compaction) -> RawFd {
    compaction.file.as_ref().expect("the compaction's file is open").as_raw_fd()
}

fn file_name_c(worker: u16, generation: u64) -> CString {
    // Cannot fail: the name is ASCII digits, letters and punctuation, no NUL.
    CString::new(file_name(worker, generation)).expect("no NUL in a journal file name")
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            // The kernel may still read it: leak rather than free (only after a stop that
            // gave up waiting).
            std::mem::forget(batch.buf);
        }
        if let Some((buf, _)) = self.compacting.as_mut().and_then(|c| c.writing.take()) {
            std::mem::forget(buf);
        }
        // An `openat`/`unlinkat` in flight may still read its path.
        std::mem::forget(std::mem::take(&mut self.paths));
    }
}

/// The wall-clock time (milliseconds since the Unix epoch) of the loop's `Millis(0)`, given
/// `now` (a clock before 1970 counts as 1970: retained messages then count as set at the
/// restart).
fn unix_millis_at(now: Millis) -> u64 {
    let since_1970 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let unix = since_1970.map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    unix.saturating_sub(now.0)
}

/// Stops the process: a journal that cannot be written cannot keep what was acknowledged.
fn fatal(what: &str, errno: i32) -> ! {
    let error = std::io::Error::from_raw_os_error(errno);
    tracing::error!(%error, "persistence: {what} failed; stopping (acknowledged messages must stay durable)");
    panic!("persistence: {what} failed: {error}");
}

impl Worker {
    /// Phase 4: the interval fsync if due; then, with no batch in flight, the broker's pending
    /// records as the next batch, and a compaction's next step.
    pub(super) fn journal_turn(&mut self, now: Millis) {
        let Some(journal) = self.journal.as_mut() else { return };
        if journal.deadline().is_some_and(|at| at <= now) {
            journal.unsynced = false;
            journal.sync_in_flight = true;
            let fd = journal.file.as_raw_fd();
            self.push_fsync(fd, Op::JournalSync);
        }
        let Some(journal) = self.journal.as_mut() else { return };
        if journal.batch.is_some() {
            return;
        }
        let threshold = journal.snapshot_bytes.saturating_add(journal.config.compact_bytes);
        if journal.compacting.is_none() && journal.length >= threshold {
            self.begin_compaction();
        }
        let Some(journal) = self.journal.as_mut() else { return };
        let finishing = journal.compacting.as_ref().is_some_and(|compaction| {
            compaction.cursor.done() && compaction.file.is_some() && compaction.writing.is_none()
        });
        let mut buf = std::mem::take(&mut journal.spare);
        let position = self.broker.take_journal(&mut buf);
        if finishing {
            return self.finish_compaction(buf, position);
        }
        let Some(journal) = self.journal.as_mut() else { return };
        match position {
            None => journal.spare = buf,
            Some(position) => {
                if let Some(compaction) = journal.compacting.as_mut() {
                    compaction.stream.extend_from_slice(&buf);
                }
                let base = journal.length;
                let stage = Stage::Write;
                journal.batch =
                    Some(Batch { buf, written: 0, position, base, stage, compaction: None });
                self.submit_write();
            }
        }
        // Nothing is pending now (the batch took it all): a slice shows the state after it.
        if let Some(compaction) = self.journal.as_mut().and_then(|j| j.compacting.as_mut()) {
            if !compaction.cursor.done() {
                self.broker.snapshot_slice(&mut compaction.cursor, &mut compaction.stream);
            }
        }
        self.pump_compaction();
    }

    /// Starts creating the next generation's file (`openat` through the ring) and its
    /// snapshot (the header).
    fn begin_compaction(&mut self) {
        let Some(journal) = self.journal.as_mut() else { return };
        let generation = journal.generation + 1;
        let token = journal.keep_path(file_name_c(journal.worker, generation));
        let path = journal.paths.last().expect("just kept").1.as_ptr();
        let flags = libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY | libc::O_CLOEXEC;
        let entry = opcode::OpenAt::new(types::Fd(journal.dir.as_raw_fd()), path)
            .flags(flags)
            .mode(0o644)
            .build()
            .user_data(UserData::new(Op::JournalFile, OPEN_SLOT, token).pack());
        journal.file_ops += 1;
        let mut stream = Vec::new();
        let cursor = self.broker.begin_snapshot(generation, SliceLimits::RUNTIME, &mut stream);
        tracing::info!(
            worker = journal.worker,
            generation,
            old_bytes = journal.length,
            "persistence: compacting the journal"
        );
        journal.compacting = Some(Box::new(Compaction {
            file: None,
            generation,
            cursor,
            stream,
            writing: None,
            length: 0,
        }));
        // SAFETY: the path is kept in `Journal::paths` until this completes (leaked if the
        // journal is dropped first); the directory descriptor lives as long as the journal.
        unsafe { self.ring.push(&entry) };
    }

    /// A compaction's file, its old file's close or its deletion completed.
    pub(super) fn on_journal_file(&mut self, completion: Completion) {
        let journal = self.journal.as_mut().expect("a journal completion without a journal");
        journal.file_ops -= 1;
        let data = completion.user_data;
        match data.slot {
            OPEN_SLOT => {
                journal.release_path(data.generation);
                if let Some(errno) = completion.errno() {
                    fatal("creating a compacted journal file", errno);
                }
                // SAFETY: a successful `openat` returns a new descriptor that nothing else owns.
                let file = unsafe { File::from_raw_fd(completion.result) };
                let compaction = journal.compacting.as_mut().expect("an open without a compaction");
                compaction.file = Some(file);
                self.pump_compaction();
            }
            UNLINK_SLOT => {
                journal.release_path(data.generation);
                if let Some(errno) = completion.errno() {
                    let error = std::io::Error::from_raw_os_error(errno);
                    tracing::warn!(worker = journal.worker, %error, "persistence: could not delete the compacted journal file");
                }
            }
            _ => {
                if let Some(errno) = completion.errno() {
                    let error = std::io::Error::from_raw_os_error(errno);
                    tracing::warn!(worker = journal.worker, %error, "persistence: closing the compacted journal file failed");
                }
            }
        }
    }

    /// The old file after a compaction: closed and deleted through the ring.
    fn retire_file(&mut self, old: File, generation: u64) {
        let Some(journal) = self.journal.as_mut() else { return };
        let close = opcode::Close::new(types::Fd(old.into_raw_fd()))
            .build()
            .user_data(UserData::new(Op::JournalFile, CLOSE_SLOT, 0).pack());
        let token = journal.keep_path(file_name_c(journal.worker, generation));
        let path = journal.paths.last().expect("just kept").1.as_ptr();
        let unlink = opcode::UnlinkAt::new(types::Fd(journal.dir.as_raw_fd()), path)
            .build()
            .user_data(UserData::new(Op::JournalFile, UNLINK_SLOT, token).pack());
        journal.file_ops += 2;
        // SAFETY: a close hands the kernel no memory; the descriptor was ours alone (an
        // operation still using it holds its own reference to the file).
        unsafe { self.ring.push(&close) };
        // SAFETY: the path is kept in `Journal::paths` until this completes (leaked if the
        // journal is dropped first); the directory descriptor lives as long as the journal.
        unsafe { self.ring.push(&unlink) };
    }

    /// Submits the compaction's unsubmitted bytes, if no background write is in flight.
    fn pump_compaction(&mut self) {
        let Some(journal) = self.journal.as_mut() else { return };
        let Some(compaction) = journal.compacting.as_mut() else { return };
        if compaction.file.is_none() || compaction.writing.is_some() || compaction.stream.is_empty()
        {
            return;
        }
        let buf = std::mem::take(&mut compaction.stream);
        compaction.writing = Some((buf, 0));
        self.submit_compaction_write();
    }

    fn submit_compaction_write(&mut self) {
        let Some(compaction) = self.journal.as_mut().and_then(|j| j.compacting.as_mut()) else {
            return;
        };
        let fd = compaction_fd(compaction);
        let offset = compaction.length;
        let (buf, written) = compaction.writing.as_ref().expect("a compaction write to submit");
        let rest = &buf[*written..];
        let len = rest.len().min(WRITE_BYTES_MAX) as u32;
        let entry = opcode::Write::new(types::Fd(fd), rest.as_ptr(), len)
            .offset(offset + *written as u64)
            .build()
            .user_data(UserData::new(Op::JournalWrite, COMPACTION_SLOT, 0).pack());
        // SAFETY: the buffer is the compaction's `writing`, kept until this write's completion
        // is handled (leaked if the journal is dropped before); the file stays open with it.
        unsafe { self.ring.push(&entry) };
    }

    /// A background write of the compaction completed.
    fn on_compaction_write(&mut self, result: i32) {
        let Some(journal) = self.journal.as_mut() else { return };
        let compaction = journal.compacting.as_mut().expect("a compaction write without one");
        let (buf, written) = compaction.writing.as_mut().expect("a compaction write in flight");
        let wrote = usize::try_from(result).unwrap_or(0);
        if wrote == 0 {
            fatal("a compaction write (no progress)", libc::EIO);
        }
        *written += wrote;
        if *written < buf.len() {
            journal.counters.short_writes += 1;
            return self.submit_compaction_write();
        }
        compaction.length += buf.len() as u64;
        compaction.writing = None;
        self.pump_compaction();
    }

    /// The snapshot is complete and written up to its unsubmitted rest: that rest and this
    /// turn's records (`buf`, ending at `position`) go to the new file, which becomes the
    /// current one once written and fsynced with its directory (`finish_batch`).
    fn finish_compaction(&mut self, buf: Vec<u8>, position: Option<u64>) {
        let Some(journal) = self.journal.as_mut() else { return };
        let mut compaction = journal.compacting.take().expect("a compaction to finish");
        let mut all = std::mem::take(&mut compaction.stream);
        all.extend_from_slice(&buf);
        if buf.capacity() <= SPARE_BYTES_MAX {
            let mut buf = buf;
            buf.clear();
            journal.spare = buf;
        }
        let base = compaction.length;
        // Nothing new: the batch only makes the new file current (a position already durable).
        let position = position.unwrap_or(0);
        let fd = compaction_fd(&compaction);
        let compaction = Some(*compaction);
        // Everything may be written already: then only the fsyncs remain (a write of nothing
        // would complete with 0, which means no progress).
        let stage = if all.is_empty() { Stage::SyncFile } else { Stage::Write };
        journal.batch = Some(Batch { buf: all, written: 0, position, base, stage, compaction });
        match stage {
            Stage::Write => self.submit_write(),
            _ => {
                journal.counters.fsyncs += 1;
                self.push_fsync(fd, Op::JournalFsync);
            }
        }
    }

    /// Submits the unwritten rest of the batch.
    fn submit_write(&mut self) {
        let Some(journal) = self.journal.as_mut() else { return };
        let fd = journal.batch_fd();
        let batch = journal.batch.as_mut().expect("a batch to write");
        let rest = &batch.buf[batch.written..];
        let len = rest.len().min(WRITE_BYTES_MAX) as u32;
        let entry = opcode::Write::new(types::Fd(fd), rest.as_ptr(), len)
            .offset(batch.base + batch.written as u64)
            .build()
            .user_data(UserData::new(Op::JournalWrite, BATCH_SLOT, 0).pack());
        // A journal dropped before the completion leaks the buffer rather than free it.
        // SAFETY: the buffer is the batch's, owned by the journal until this write completes;
        // the file descriptor stays open as long as the batch (the kernel holds a reference).
        unsafe { self.ring.push(&entry) };
    }

    fn push_fsync(&mut self, fd: RawFd, op: Op) {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .build()
            .user_data(UserData::new(op, BATCH_SLOT, 0).pack());
        // SAFETY: an fsync hands the kernel no memory; the descriptor outlives the operation
        // (the journal keeps its files until their operations complete).
        unsafe { self.ring.push(&entry) };
    }

    /// A journal operation completed.
    pub(super) fn on_journal(&mut self, completion: Completion, now: Millis) {
        let op = completion.user_data.op;
        let journal = self.journal.as_mut().expect("a journal completion without a journal");
        if op == Op::JournalSync {
            journal.sync_in_flight = false;
            journal.counters.fsyncs += 1;
            if let Some(errno) = completion.errno() {
                fatal("an interval fsync of the journal", errno);
            }
            return;
        }
        if let Some(errno) = completion.errno() {
            fatal(
                if op == Op::JournalWrite { "a journal write" } else { "a journal fsync" },
                errno,
            );
        }
        if completion.user_data.slot == COMPACTION_SLOT {
            return self.on_compaction_write(completion.result);
        }
        let policy = journal.config.fsync;
        let batch = journal.batch.as_mut().expect("a journal completion without a batch");
        match batch.stage {
            Stage::Write => {
                let wrote = usize::try_from(completion.result).unwrap_or(0);
                if wrote == 0 {
                    fatal("a journal write (no progress)", libc::EIO);
                }
                batch.written += wrote;
                if batch.written < batch.buf.len() {
                    journal.counters.short_writes += 1;
                    return self.submit_write();
                }
                if batch.compaction.is_some() || policy == FsyncPolicy::Batch {
                    batch.stage = Stage::SyncFile;
                    let fd = journal.batch_fd();
                    journal.counters.fsyncs += 1;
                    return self.push_fsync(fd, Op::JournalFsync);
                }
            }
            Stage::SyncFile => {
                if batch.compaction.is_some() {
                    batch.stage = Stage::SyncDir;
                    let fd = journal.dir.as_raw_fd();
                    return self.push_fsync(fd, Op::JournalFsync);
                }
            }
            Stage::SyncDir => {}
        }
        self.finish_batch(now);
    }

    fn finish_batch(&mut self, now: Millis) {
        let Some(journal) = self.journal.as_mut() else { return };
        let Some(mut batch) = journal.batch.take() else { return };
        journal.counters.batches += 1;
        journal.counters.bytes += batch.buf.len() as u64;
        let mut retired = None;
        match batch.compaction.take() {
            Some(compaction) => {
                let file = compaction.file.expect("a finished compaction's file is open");
                let old = std::mem::replace(&mut journal.file, file);
                retired = Some((old, journal.generation));
                journal.generation = compaction.generation;
                journal.length = batch.base + batch.buf.len() as u64;
                journal.snapshot_bytes = journal.length;
                journal.counters.compactions += 1;
            }
            None => {
                journal.length += batch.buf.len() as u64;
                if journal.config.fsync == FsyncPolicy::Interval && !journal.unsynced {
                    journal.unsynced = true;
                    journal.next_sync_at = now.plus_millis(journal.config.fsync_interval_millis);
                }
            }
        }
        if batch.buf.capacity() <= SPARE_BYTES_MAX {
            batch.buf.clear();
            journal.spare = batch.buf;
        }
        if let Some((old, generation)) = retired {
            // The new snapshot and its directory entry are durable: the old file can go.
            self.retire_file(old, generation);
        }
        self.broker.handle_durable(batch.position, now);
    }

    /// Whether the journal has nothing in flight and nothing pending (for a clean stop).
    pub(super) fn journal_idle(&self) -> bool {
        self.journal.as_ref().is_none_or(|journal| journal.idle())
            && self.broker.journal_pending_bytes() == 0
    }
}
