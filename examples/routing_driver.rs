//! A small driver for counting the subscription index's cost outside criterion: memory per
//! subscription (heap bytes requested, and resident set growth) and, under callgrind, the
//! instructions of routing a batch of publishes.
//!
//! Usage: `routing_driver <devices> <publishes>`. Builds the same index as `benches/routing.rs`
//! (`devices` distinct `device/<n>/cmd` filters plus wildcards), then routes `publishes` topics
//! in `route_all`, which callgrind can isolate:
//!
//! ```text
//! cargo build --release --example routing_driver
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*route_all*' \
//!     target/release/examples/routing_driver 1000000 100000
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use mimalloc::MiMalloc;
use ringmq::broker::subscriptions::{Matches, SubscriptionIndex};
use ringmq::broker::{SessionId, WorkerId};
use ringmq::protocol::{QoS, TopicFilter, TopicName};

/// The broker's allocator, counting the bytes its callers hold.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `MiMalloc`; the counter is a plain atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, passed on unchanged.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `MiMalloc` with this `layout`, per the caller's contract.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `realloc`'s contract, passed on unchanged.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("driver filter is valid")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("driver topic is valid")
}

/// Resident set size in bytes, from /proc/self/statm (pages of 4 KiB).
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// This thread's CPU time in nanoseconds: unlike the wall clock, it does not count the time
/// the (shared, busy) machine gave to other processes.
fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The index of `benches/routing.rs`; also reports the slowest single subscribe in CPU time
/// (a table that grows all at once would show here).
fn index_of(devices: u32) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    let (mut slowest_nanos, mut slowest_at) = (0, 0);
    for n in 0..devices {
        let f = filter(&format!("device/{n}/cmd"));
        let started = thread_cpu_nanos();
        index.subscribe(&f, SessionId(n), QoS::AtLeastOnce);
        let spent = thread_cpu_nanos() - started;
        if spent > slowest_nanos {
            (slowest_nanos, slowest_at) = (spent, n);
        }
    }
    println!("slowest subscribe: {:.3} ms of CPU, the {slowest_at}th", slowest_nanos as f64 / 1e6);
    if devices > 1 {
        index.subscribe(&filter("device/+/cmd"), SessionId(devices), QoS::AtMostOnce);
        index.subscribe(&filter("device/#"), SessionId(devices + 1), QoS::AtMostOnce);
        index.subscribe(&filter("+/+/status"), SessionId(devices + 2), QoS::AtMostOnce);
        index.set_remote_interest(&filter("device/+/cmd"), WorkerId(1), true);
        for site in 0..100 {
            let f = filter(&format!("site/{site}/#"));
            index.subscribe(&f, SessionId(devices + 3 + site), QoS::AtMostOnce);
        }
    }
    index
}

#[inline(never)]
fn route_all(index: &SubscriptionIndex, topics: &[TopicName], matches: &mut Matches) -> usize {
    let mut delivered = 0;
    for name in topics {
        index.match_topic(black_box(name), matches);
        delivered += matches.sessions.len();
    }
    delivered
}

fn main() {
    let mut args = std::env::args().skip(1);
    let devices: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let publishes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);

    let (bytes_before, resident_before) = (LIVE_BYTES.load(Ordering::Relaxed), resident_bytes());
    let started = Instant::now();
    let cpu_started = thread_cpu_nanos();
    let index = index_of(devices);
    let built = started.elapsed();
    let built_cpu_nanos = thread_cpu_nanos() - cpu_started;
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - bytes_before;
    let resident = resident_bytes() - resident_before;
    let subscriptions = index.len() as f64;
    println!(
        "{} subscriptions, {} nodes, built in {:.2?} ({:.0} ns of CPU each): \
         {:.1} heap bytes/subscription, {:.1} resident bytes/subscription",
        index.len(),
        index.node_count(),
        built,
        built_cpu_nanos as f64 / subscriptions,
        heap as f64 / subscriptions,
        resident as f64 / subscriptions,
    );

    let topics: Vec<TopicName> = (0..publishes)
        .map(|i| (i * 2_654_435_761) % u64::from(devices))
        .map(|n| topic(&format!("device/{n}/cmd")))
        .collect();
    let mut matches = Matches::default();
    let started = Instant::now();
    let delivered = route_all(&index, &topics, &mut matches);
    let elapsed = started.elapsed();
    println!(
        "routed {publishes} publishes to {delivered} sessions in {elapsed:.2?} ({:.0} ns each)",
        elapsed.as_nanos() as f64 / publishes as f64
    );
}
