//! The ACL checks on the message path (a PUBLISH's write check, each delivery's read check)
//! allocate nothing: a counting global allocator (this test binary's only allocator, hence
//! its own file) counts allocations while thousands of checks run, matching and not, through
//! `topic` rules, `%c`/`%u` patterns and deny rules.

use ringmq::auth::{AclTable, Identity};

mod counting_alloc;

use counting_alloc::{counted, Counting};

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
    let (allowed, allocations) = counted(|| {
        let mut allowed = 0;
        for _ in 0..1000 {
            for topic in topics {
                allowed += usize::from(table.may_read(user, who, topic));
                allowed += usize::from(table.may_write(user, who, topic));
            }
        }
        allowed
    });
    // alice reads alice/a/b, sensors, devices/phone-1/state, users/alice/inbox (4) and writes
    // alice/a/b and devices/phone-1/state (2): the checks did real work.
    assert_eq!(allowed, 6 * 1000);
    assert_eq!(allocations, 0, "an ACL check allocated");
    // The counter does count this thread's allocations (so the zero above can fail).
    let ((), control) = counted(|| drop(std::hint::black_box(vec![0u8; 64])));
    assert_eq!(control, 1);
}
