//! Routing a publish through the subscription index allocates nothing once its `Matches` has
//! warmed up, and holding a subscription costs a bounded number of heap bytes.
//!
//! A counting global allocator (its own test binary: a program has one global allocator)
//! counts allocations and live bytes per thread, so the test harness's other threads do not
//! disturb the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringmq::broker::subscriptions::{Matches, SubscriptionIndex};
use ringmq::broker::{SessionId, WorkerId};
use ringmq::protocol::{QoS, TopicFilter, TopicName};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn count(allocations: u64, bytes: i64) {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + allocations));
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as i64);
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(0, -(layout.size() as i64));
        // SAFETY: `ptr` came from `System` with this `layout`, per the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(1, new_size as i64 - layout.size() as i64);
        // SAFETY: the caller upholds `realloc`'s contract, passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("test filter is valid")
}

fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("test topic is valid")
}

/// Distinct per-device filters plus wildcards and shared filters, as a broker would hold.
fn realistic_index(devices: u32) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    for n in 0..devices {
        index.subscribe(&filter(&format!("device/{n}/cmd")), SessionId(n), QoS::AtLeastOnce);
    }
    for session in 0..20 {
        index.subscribe(&filter("device/+/cmd"), SessionId(session), QoS::AtMostOnce);
        index.subscribe(&filter("device/#"), SessionId(session + 10), QoS::ExactlyOnce);
    }
    index.subscribe(&filter("#"), SessionId(7), QoS::AtMostOnce);
    index.set_remote_interest(&filter("device/+/cmd"), WorkerId(1), true);
    index.set_remote_interest(&filter("device/5/#"), WorkerId(2), true);
    index
}

#[test]
fn match_topic_allocates_nothing_after_warm_up() {
    let index = realistic_index(1000);
    let topics: Vec<TopicName> = (0..1000)
        .map(|n| topic(&format!("device/{n}/cmd")))
        .chain([topic("device/5/x/y/z"), topic("elsewhere"), topic("$SYS/load")])
        .collect();
    let mut matches = Matches::default();

    // The first routes size the reused vectors: the counter sees those allocations, which
    // shows it counts this thread's allocations at all.
    let before_warm_up = allocations();
    for name in &topics {
        index.match_topic(name, &mut matches);
    }
    assert!(allocations() > before_warm_up, "the warm-up allocates the Matches vectors");

    let before = allocations();
    let mut delivered = 0;
    for _ in 0..3 {
        for name in &topics {
            index.match_topic(name, &mut matches);
            delivered += matches.sessions.len();
        }
    }
    assert_eq!(allocations() - before, 0, "routing allocated after warm-up");
    // The wildcard subscribers are sessions 0..30 (`+`: 0..20, `device/#`: 10..30, `#`: 7).
    // Device n's topic reaches them and session n: 31 sessions for n >= 30, 30 below.
    // "device/5/x/y/z" reaches `device/#` and `#` (21), "elsewhere" `#` only, "$SYS/load" none.
    assert_eq!(delivered, 3 * (970 * 31 + 30 * 30 + 21 + 1), "each session once per topic");
}

#[test]
fn a_distinct_subscription_costs_under_120_heap_bytes() {
    // Issue 6 budgets 600 bytes per idle subscribed connection in total; this is the index's
    // share for one `device/<n>/cmd` filter, measured as live heap bytes requested.
    let devices = 100_000;
    let before = live_bytes();
    let index = realistic_index(devices);
    let per_subscription = (live_bytes() - before) as f64 / f64::from(devices);
    assert!(index.len() >= devices as usize);
    assert!(per_subscription < 120.0, "{per_subscription:.1} bytes per subscription");
    assert!(per_subscription > 40.0, "implausibly small: {per_subscription:.1}; is it counting?");
}
