//! The ACL checks on the message path (a PUBLISH's write check, each delivery's read check)
//! allocate nothing: a counting global allocator (this test binary's only allocator, hence
//! its own file) counts allocations while thousands of checks run, matching and not, through
//! `topic` rules, `%c`/`%u` patterns and deny rules.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ringmq::auth::{AclTable, Identity};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the counter is a relaxed atomic and does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout obligations are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (all allocations go there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`; `new_size` obligations are the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn read_and_write_checks_allocate_nothing() {
    let table = AclTable::parse(
        "topic read public/#\nuser alice\ntopic readwrite alice/#\ntopic deny alice/locked/#\n\
         topic read sensors/+/temperature\npattern readwrite devices/%c/#\n\
         pattern read users/%u/inbox\npattern deny devices/%c/private\n",
    )
    .expect("the ACL");
    let who = Identity { client_id: "phone-1", username: Some("alice") };
    let user = table.resolve(who.username);
    let topics = [
        "alice/a/b",
        "alice/locked/x",
        "sensors/kitchen/temperature",
        "devices/phone-1/state",
        "devices/phone-1/private",
        "users/alice/inbox",
        "public/news",
        "$SYS/broker/uptime",
    ];
    let mut allowed = 0;
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..1000 {
        for topic in topics {
            allowed += usize::from(table.may_read(user, who, topic));
            allowed += usize::from(table.may_write(user, who, topic));
        }
    }
    COUNTING.store(false, Ordering::Relaxed);
    // alice reads alice/a/b, sensors, devices/phone-1/state, users/alice/inbox (4) and writes
    // alice/a/b and devices/phone-1/state (2): the checks did real work.
    assert_eq!(allowed, 6 * 1000);
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "an ACL check allocated");
}
