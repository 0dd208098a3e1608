//! Timers: keepalive [MQTT-3.1.2-24], connect timeouts, slow consumers, and expiry of unused
//! persistent sessions, on one hashed timing wheel.
//!
//! The wheel has [`BUCKETS`] coarse buckets of [`BUCKET_MILLIS`] each. A timer names what to
//! re-check (a connection or a session, with a serial so a stale entry is recognised), not a
//! deadline: when its bucket comes due, the broker recomputes the real deadline from the
//! current state and either acts or files the timer again. So a packet from a client costs one
//! store (`last_heard = now`), never a wheel update, and a tick visits only the buckets that
//! came due — never every connection. Deadlines beyond the wheel's horizon land in the bucket
//! they wrap to and are re-filed when it comes round (once per horizon), which keeps the wheel
//! fixed-size however long a keepalive is.
//!
//! Invariants: each connection and each offline session has at most one live timer (a new
//! one is filed only with a new serial/epoch, which makes the old one stale), plus, for a
//! connection, at most one slow-consumer timer (`Conn::slow_timer_filed`); a timer fires no
//! earlier than its deadline and at most one bucket after it.

use super::connection::{Conn, Phase};
use super::{Broker, CloseReason, ConnId, Millis, SessionId};

/// Width of one bucket: the precision of every broker timer.
pub const BUCKET_MILLIS: u64 = 100;
/// Buckets in the wheel: a horizon of 102.4 s, beyond which timers are re-filed lazily.
pub const BUCKETS: usize = 1024;
const WORDS: usize = BUCKETS / 64;
/// Timers' room an emptied bucket keeps (1 KiB); a larger allocation is given back.
const BUCKET_KEPT_CAPACITY: usize = 64;

/// What a timer re-checks when its bucket comes due.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Timer {
    /// A connection's connect timeout or keepalive; the serial is the connection's.
    Conn(ConnId, u32),
    /// An offline persistent session's expiry; the epoch is the session's.
    Session(SessionId, u32),
    /// A connection whose session hit its queue bound: close it if it is still stuck there
    /// without acknowledging anything after `slow_consumer_timeout_secs`.
    SlowConsumer(ConnId, u32),
}

#[derive(Debug)]
pub(super) struct TimingWheel {
    buckets: Vec<Vec<Timer>>,
    /// Bit per bucket: non-empty. Finds the next due bucket in `WORDS` steps.
    occupied: [u64; WORDS],
    /// The absolute bucket number processed next; every earlier bucket has been processed.
    cursor: u64,
    len: usize,
}

impl TimingWheel {
    pub fn new(now: Millis) -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            cursor: now.0 / BUCKET_MILLIS,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Files `timer` to be re-checked at or after `due` (and at most a bucket later).
    pub fn insert(&mut self, due: Millis, timer: Timer) {
        let tick = due.0.div_ceil(BUCKET_MILLIS).max(self.cursor);
        let slot = (tick % BUCKETS as u64) as usize;
        self.buckets[slot].push(timer);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// When the earliest non-empty bucket comes due. A bucket holding only wrapped far-future
    /// timers makes this early, which costs one harmless re-check.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        let start = (self.cursor % BUCKETS as u64) as usize;
        let distance = (0..BUCKETS)
            .step_by(64)
            .find_map(|offset| {
                let slot = (start + offset) % BUCKETS;
                let bits = self.window_bits(slot);
                (bits != 0).then(|| offset + bits.trailing_zeros() as usize)
            })
            .expect("a non-empty wheel has an occupied bucket");
        Some(Millis((self.cursor + distance as u64) * BUCKET_MILLIS))
    }

    /// The occupancy bits of the 64 buckets starting at `slot`, wrapping, lowest first.
    fn window_bits(&self, slot: usize) -> u64 {
        let word = slot / 64;
        let shift = slot % 64;
        let low = self.occupied[word] >> shift;
        if shift == 0 {
            return low;
        }
        let high = self.occupied[(word + 1) % WORDS] << (64 - shift);
        low | high
    }

    /// Moves every timer in the buckets due by `now` to `out`.
    pub fn expire(&mut self, now: Millis, out: &mut Vec<Timer>) {
        let last = now.0 / BUCKET_MILLIS;
        if last < self.cursor {
            return;
        }
        // A long gap visits each bucket once: all of them hold timers that are due or wrapped.
        let steps = (last - self.cursor + 1).min(BUCKETS as u64);
        for step in 0..steps {
            let slot = ((self.cursor + step) % BUCKETS as u64) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            let bucket = &mut self.buckets[slot];
            self.len -= bucket.len();
            out.append(bucket);
            if bucket.capacity() > BUCKET_KEPT_CAPACITY {
                // A bucket that once held a burst (a connect storm's timers) would keep room
                // for it: over a few keepalive periods every bucket would, ~16 bytes per
                // connection each (issue 6). Small buckets keep theirs, so steady filing does
                // not allocate.
                *bucket = Vec::new();
            }
        }
        self.cursor = last + 1;
    }
}

impl Broker {
    /// Runs every timer due by `now`.
    pub(super) fn run_timers(&mut self, now: Millis) {
        let mut due = std::mem::take(&mut self.due_timers);
        self.timers.expire(now, &mut due);
        for timer in due.drain(..) {
            match timer {
                Timer::Conn(conn, serial) => self.check_conn_timer(conn, serial, now),
                Timer::Session(session, epoch) => self.check_session_expiry(session, epoch, now),
                Timer::SlowConsumer(conn, serial) => self.check_slow_consumer(conn, serial, now),
            }
        }
        if due.capacity() > BUCKET_KEPT_CAPACITY {
            due = Vec::new(); // As for the wheel's buckets: a burst's room is given back.
        }
        self.due_timers = due;
    }

    /// The connection's deadline: connect timeout before CONNECT, 1.5 x keepalive after.
    fn conn_deadline(&self, conn: ConnId) -> Option<(Millis, CloseReason)> {
        let state = self.conns.get(&conn)?;
        match state.phase {
            Phase::AwaitingConnect => Some((
                state.opened_at.plus_secs(u64::from(self.config.connect_timeout_secs)),
                CloseReason::ConnectTimeout,
            )),
            Phase::Active(_) if state.keepalive_grace_millis > 0 => Some((
                state.last_heard.plus_millis(u64::from(state.keepalive_grace_millis)),
                CloseReason::KeepaliveTimeout,
            )),
            Phase::Active(_) => None,
        }
    }

    /// Files the connection's timer (connect timeout or keepalive) under its current serial.
    pub(super) fn file_conn_timer(&mut self, conn: ConnId) {
        let Some((due, _)) = self.conn_deadline(conn) else {
            return;
        };
        let serial = self.conns[&conn].serial;
        self.timers.insert(due, Timer::Conn(conn, serial));
    }

    fn check_conn_timer(&mut self, conn: ConnId, serial: u32, now: Millis) {
        if self.conns.get(&conn).is_none_or(|state| state.serial != serial) {
            return; // Stale: the connection closed, or was re-filed under a new serial.
        }
        let Some((due, reason)) = self.conn_deadline(conn) else {
            return;
        };
        if now >= due {
            // [MQTT-3.1.2-24]: as if the network failed, so the will is published.
            self.close_conn(conn, Some(reason), now);
        } else {
            self.timers.insert(due, Timer::Conn(conn, serial));
        }
    }

    fn check_slow_consumer(&mut self, conn: ConnId, serial: u32, now: Millis) {
        let timeout_millis = self.config.slow_consumer_timeout_secs.saturating_mul(1000);
        let Some(state) = self.conns.get_mut(&conn).filter(|state| state.serial == serial) else {
            return; // Stale: the connection closed.
        };
        state.slow_timer_filed = false;
        let Some(since) = state.queue_full_since() else {
            return; // The client acknowledged something (or the queue moved) since.
        };
        let due = since.plus_millis(timeout_millis);
        if now >= due {
            self.close_conn(conn, Some(CloseReason::SlowConsumer), now);
        } else {
            state.slow_timer_filed = true;
            self.timers.insert(due, Timer::SlowConsumer(conn, serial));
        }
    }

    /// Files the expiry timer of a session that just went offline, if sessions expire.
    pub(super) fn file_session_timer(&mut self, session: SessionId) {
        let expiry_secs = self.config.persistent_client_expiration_secs;
        if expiry_secs == 0 {
            return;
        }
        let state = self.sessions.get(session);
        let due = state.offline_since.plus_secs(expiry_secs);
        self.timers.insert(due, Timer::Session(session, state.epoch));
    }

    fn check_session_expiry(&mut self, session: SessionId, epoch: u32, now: Millis) {
        let Some(state) = self.sessions.try_get(session) else {
            return;
        };
        if state.epoch != epoch || state.conn.is_some() {
            return; // Stale: the session came back (and may since have gone again).
        }
        let due = state.offline_since.plus_secs(self.config.persistent_client_expiration_secs);
        if now >= due {
            self.stats.sessions_expired += 1;
            self.destroy_session(session);
        } else {
            self.timers.insert(due, Timer::Session(session, epoch));
        }
    }
}

/// A message for `conn`'s session was dropped at the queue bound at `now`: starts the
/// slow-consumer clock unless it runs already, and makes sure one timer will check it. A
/// timeout of 0 never closes (drops only).
pub(super) fn start_slow_consumer_clock(
    conn: &mut Conn,
    id: ConnId,
    now: Millis,
    timeout_secs: u64,
    wheel: &mut TimingWheel,
) {
    if timeout_secs == 0 || conn.queue_full_since().is_some() {
        return;
    }
    conn.set_queue_full_since(now);
    if !conn.slow_timer_filed {
        conn.slow_timer_filed = true;
        wheel.insert(now.plus_secs(timeout_secs), Timer::SlowConsumer(id, conn.serial));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> Timer {
        Timer::Conn(ConnId::new(slot, 0), 0)
    }

    #[test]
    fn a_timer_fires_in_the_first_tick_at_or_after_its_deadline() {
        let mut wheel = TimingWheel::new(Millis(0));
        wheel.insert(Millis(1_050), conn(1));
        assert_eq!(wheel.next_deadline(), Some(Millis(1_100)));
        let mut out = Vec::new();
        wheel.expire(Millis(1_099), &mut out);
        assert!(out.is_empty(), "not before its bucket");
        wheel.expire(Millis(1_100), &mut out);
        assert_eq!(out, vec![conn(1)]);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn an_emptied_bucket_gives_back_the_room_of_a_burst_and_keeps_a_small_one() {
        let mut wheel = TimingWheel::new(Millis(0));
        for slot in 0..1000 {
            wheel.insert(Millis(100), conn(slot));
        }
        for slot in 0..10 {
            wheel.insert(Millis(200), conn(slot));
        }
        let mut out = Vec::new();
        wheel.expire(Millis(200), &mut out);
        assert_eq!(out.len(), 1010);
        assert_eq!(wheel.buckets[1].capacity(), 0, "the burst's bucket keeps no room");
        assert!(wheel.buckets[2].capacity() >= 10, "a small bucket keeps its room");
    }

    #[test]
    fn far_deadlines_wrap_and_come_back_for_a_re_check() {
        let horizon = BUCKETS as u64 * BUCKET_MILLIS;
        let mut wheel = TimingWheel::new(Millis(0));
        wheel.insert(Millis(horizon + 500), conn(7));
        // The bucket it wrapped to comes due first: the owner re-checks and re-files it.
        assert_eq!(wheel.next_deadline(), Some(Millis(500)));
        let mut out = Vec::new();
        wheel.expire(Millis(500), &mut out);
        assert_eq!(out, vec![conn(7)]);
    }

    #[test]
    fn a_long_gap_visits_every_bucket_once_and_keeps_the_cursor_ahead() {
        let mut wheel = TimingWheel::new(Millis(0));
        for slot in 0..3000u32 {
            wheel.insert(Millis(u64::from(slot) * 37), conn(slot));
        }
        let mut out = Vec::new();
        wheel.expire(Millis(10_000_000), &mut out);
        assert_eq!(out.len(), 3000);
        assert_eq!(wheel.len(), 0);
        // A timer filed in the past now lands in the next bucket to process.
        wheel.insert(Millis(5), conn(1));
        assert_eq!(wheel.next_deadline(), Some(Millis(10_000_100)));
    }

    #[test]
    fn next_deadline_finds_buckets_across_word_and_wrap_boundaries() {
        let mut wheel = TimingWheel::new(Millis(BUCKET_MILLIS * 1000));
        wheel.insert(Millis(BUCKET_MILLIS * 1030), conn(1)); // slot 6 after wrapping
        assert_eq!(wheel.next_deadline(), Some(Millis(BUCKET_MILLIS * 1030)));
        wheel.insert(Millis(BUCKET_MILLIS * 1010), conn(2)); // slot 1010, same lap
        assert_eq!(wheel.next_deadline(), Some(Millis(BUCKET_MILLIS * 1010)));
    }
}
