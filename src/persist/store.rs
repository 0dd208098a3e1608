//! The journal's files: where they are, how a start-up recovers them and moves to a new
//! epoch. Blocking file I/O, used only before the worker loops start.
//!
//! Layout: `<dir>/epoch-<E>/w<worker>-<generation>.wal`. An epoch is the set of files one run
//! of the broker writes (its worker count). At start-up, [`recover`] reads the newest complete
//! epoch (a directory named `epoch-<E>`; `.tmp` ones are half-made and ignored), and
//! [`NextEpoch`] creates `epoch-<E+1>.tmp`, where each worker writes its first snapshot;
//! [`NextEpoch::commit`] fsyncs them, renames the directory to `epoch-<E+1>` (atomic) and fsyncs
//! the parent; only then does [`NextEpoch::remove_older`] delete the older epochs. A crash at any step leaves the old epoch
//! or the new one complete, never neither.
//!
//! Within an epoch, a worker's highest generation whose snapshot is complete is its state; a
//! newer generation with an incomplete snapshot (a crash during compaction) is ignored and the
//! older one, deleted only once the newer snapshot is durable, is used instead.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::image::Image;
use super::replay::Replay;
use crate::broker::home_worker;
use crate::protocol::TopicFilter;

/// A worker's journal file name.
pub fn file_name(worker: u16, generation: u64) -> String {
    format!("w{worker}-{generation:08}.wal")
}

fn parse_file_name(name: &str) -> Option<(u16, u64)> {
    let rest = name.strip_prefix('w')?.strip_suffix(".wal")?;
    let (worker, generation) = rest.split_once('-')?;
    Some((worker.parse().ok()?, generation.parse().ok()?))
}

fn parse_epoch(name: &str) -> Option<u64> {
    name.strip_prefix("epoch-")?.parse().ok()
}

/// What a start-up found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The epoch read, if any, and how many workers wrote it.
    pub epoch: Option<u64>,
    pub epoch_workers: u16,
    pub image: Image,
    /// Files read, records applied, bytes dropped as bad, records skipped as inconsistent.
    pub files: usize,
    pub records: u64,
    pub dropped_bytes: u64,
    pub inconsistent: u64,
}

/// Reads the newest complete epoch under `dir` (none yet: an empty image).
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut recovered = Recovered::default();
    let Some(epoch) = newest_epoch(dir)? else {
        return Ok(recovered);
    };
    recovered.epoch = Some(epoch);
    let epoch_dir = dir.join(format!("epoch-{epoch}"));
    let mut by_worker: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for entry in fs::read_dir(&epoch_dir)? {
        let name = entry?.file_name();
        if let Some((worker, generation)) = name.to_str().and_then(parse_file_name) {
            by_worker.entry(worker).or_default().push(generation);
        }
    }
    recovered.epoch_workers = by_worker.keys().next_back().map_or(0, |worker| worker + 1);
    for (worker, mut generations) in by_worker {
        generations.sort_unstable_by(|a, b| b.cmp(a));
        let replay = recover_worker(&epoch_dir, worker, &generations, &mut recovered)?;
        if let Some(replay) = replay {
            merge(&mut recovered.image, replay.into_image());
        }
    }
    tracing::info!(
        epoch,
        files = recovered.files,
        records = recovered.records,
        sessions = recovered.image.sessions.len(),
        messages = recovered.image.entry_count(),
        retained = recovered.image.retained.len(),
        dropped_bytes = recovered.dropped_bytes,
        "persistence: recovered"
    );
    Ok(recovered)
}

/// The newest generation of `worker` whose snapshot is complete, replayed.
fn recover_worker(
    epoch_dir: &Path,
    worker: u16,
    generations: &[u64],
    recovered: &mut Recovered,
) -> io::Result<Option<Replay>> {
    for &generation in generations {
        let path = epoch_dir.join(file_name(worker, generation));
        let bytes = Bytes::from(fs::read(&path)?);
        let replay = Replay::file(bytes);
        recovered.files += 1;
        if let Some(dropped) = replay.dropped {
            recovered.dropped_bytes += dropped.bytes as u64;
            tracing::warn!(
                file = %path.display(),
                offset = dropped.offset,
                bytes = dropped.bytes,
                why = %dropped.why,
                records_kept = replay.records,
                "persistence: dropping the rest of a journal file from its first bad record"
            );
        }
        if replay.inconsistent > 0 {
            tracing::warn!(file = %path.display(), records = replay.inconsistent, "persistence: skipped records that do not fit the state");
        }
        let header_fits = replay.header.is_some_and(|(w, g)| w == worker && g == generation);
        if replay.snapshot_complete && header_fits {
            recovered.records += replay.records;
            recovered.inconsistent += replay.inconsistent;
            return Ok(Some(replay));
        }
        tracing::warn!(file = %path.display(), "persistence: no complete snapshot in this file; trying an older generation");
    }
    tracing::error!(
        worker,
        "persistence: no usable journal file for this worker; its state is lost"
    );
    Ok(None)
}

/// Adds `part` to `image`. A client id present twice (impossible within one epoch, whose
/// sessions each live on one home worker) keeps the later one.
/// Linear in the sessions (a search per session made a restart with 1M sessions quadratic:
/// minutes before the listener served).
fn merge(image: &mut Image, part: Image) {
    let mut index: std::collections::HashMap<_, usize> = image
        .sessions
        .iter()
        .enumerate()
        .map(|(at, session)| (session.client_id.clone(), at))
        .collect();
    for session in part.sessions {
        match index.get(&session.client_id) {
            Some(&at) => image.sessions[at] = session,
            None => {
                index.insert(session.client_id.clone(), image.sessions.len());
                image.sessions.push(session);
            }
        }
    }
    image.retained.extend(part.retained);
    image.qos2_forwarded.extend(part.qos2_forwarded);
}

/// Splits `image` among `workers`: each session to its client id's home worker, every
/// retained message to every worker (each keeps a full replica). `epoch_workers`: the worker
/// count of the run that wrote `image`. The held QoS 2 ids (`HeldQos2`) follow the sessions
/// that hold the copies: a pair naming the current worker count goes to the worker it names
/// (its sessions are all still there); one naming another count (the sessions it covers may
/// now be on any worker) goes to every worker, which then skips those of its sessions that
/// were homed at the worker it names when the message is re-sent (`broker/durable.rs`).
pub fn partition(image: Image, workers: u16, epoch_workers: u16) -> Vec<Image> {
    let mut parts: Vec<Image> = (0..workers)
        .map(|_| Image {
            sessions: Vec::new(),
            retained: image.retained.clone(),
            remote_interest: Vec::new(),
            qos2_forwarded: Vec::new(),
        })
        .collect();
    for mut held in image.qos2_forwarded {
        if held.workers == 0 {
            held.workers = epoch_workers;
        }
        if held.worker >= held.workers {
            continue; // cannot come from a correct writer (`record` refuses it)
        }
        if held.workers == workers {
            parts[usize::from(held.worker)].qos2_forwarded.push(held);
        } else {
            for part in &mut parts {
                part.qos2_forwarded.push(held.clone());
            }
        }
    }
    let mut interest: std::collections::BTreeSet<(u16, TopicFilter)> = Default::default();
    for session in image.sessions {
        let home = home_worker(session.client_id.as_bytes(), workers);
        for (filter, _) in &session.subscriptions {
            interest.insert((home.0, filter.clone()));
        }
        parts[home.index()].sessions.push(session);
    }
    for (worker, part) in parts.iter_mut().enumerate() {
        let others = interest.iter().filter(|(home, _)| usize::from(*home) != worker);
        part.remote_interest = others.cloned().collect();
    }
    parts
}

fn newest_epoch(dir: &Path) -> io::Result<Option<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut newest = None;
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(epoch) = entry.file_name().to_str().and_then(parse_epoch) {
            newest = newest.max(Some(epoch));
        }
    }
    Ok(newest)
}

/// The epoch a start-up writes: its `.tmp` directory until [`NextEpoch::commit`].
#[derive(Clone, Debug)]
pub struct NextEpoch {
    pub number: u64,
    /// Where the workers write their first files before the commit.
    pub tmp: PathBuf,
    /// The epoch's directory after the commit (where compaction writes).
    pub dir: PathBuf,
    root: PathBuf,
}

impl NextEpoch {
    /// Creates `<dir>/epoch-<previous+1>.tmp` (empty), and `dir` itself if needed.
    pub fn create(root: &Path, previous: Option<u64>) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let number = previous.map_or(0, |epoch| epoch + 1);
        let tmp = root.join(format!("epoch-{number}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        let dir = root.join(format!("epoch-{number}"));
        Ok(Self { number, tmp, dir, root: root.to_owned() })
    }

    /// Writes a worker's first file (its snapshot) into the `.tmp` directory and fsyncs it;
    /// returns the file, open for appending at its end.
    pub fn write_first_file(&self, worker: u16, snapshot: &[u8]) -> io::Result<File> {
        let path = self.tmp.join(file_name(worker, 0));
        let mut file = fs::OpenOptions::new().create_new(true).write(true).open(&path)?;
        file.write_all(snapshot)?;
        file.sync_all()?;
        Ok(file)
    }

    /// Makes the new epoch the one a restart reads (before any client is served: the
    /// workers' journals write into it).
    pub fn commit(&self) -> io::Result<()> {
        File::open(&self.tmp)?.sync_all()?;
        fs::rename(&self.tmp, &self.dir)?;
        File::open(&self.root)?.sync_all()
    }

    /// Deletes the epochs older than this one, and half-made ones, after [`Self::commit`]
    /// (not needed for correctness: a restart reads the newest epoch; done once clients are
    /// served, off the workers' loops, as deleting large files can take a while).
    pub fn remove_older(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale_tmp = name.ends_with(".tmp") && name.starts_with("epoch-");
            let older = parse_epoch(name).is_some_and(|epoch| epoch < self.number);
            if stale_tmp || older {
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
