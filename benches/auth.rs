//! What authentication and authorisation cost: one password verification at Mosquitto's
//! iteration counts (`$7$` PBKDF2-SHA512 with 101 and 1000 iterations, `$6$`), and one ACL read
//! check of a delivered message (the per-delivery cost for a `checked` subscriber).
//!
//! `cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3`; the figures and why
//! verification runs inline are in docs/ARCHITECTURE.md ("Authentication").

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use ringmq::auth::{AclTable, Identity, PasswordFile, PasswordHash};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for iterations in [101u32, 1000] {
        let hash = PasswordHash::with_salt(b"correct horse", &[7; 12], iterations);
        group.bench_function(format!("pbkdf2_sha512_{iterations}"), |b| {
            b.iter(|| black_box(hash.verify(black_box(b"correct horse"))))
        });
    }
    let file = PasswordFile::parse("").expect("an empty file");
    group.bench_function("unknown_user_dummy_101", |b| {
        b.iter(|| black_box(file.check(black_box("nobody"), black_box(b"guess"))))
    });
    group.finish();
}

fn acl_check(c: &mut Criterion) {
    let text = "topic read public/#\nuser alice\ntopic readwrite alice/#\ntopic read \
                sensors/+/temperature\ntopic deny sensors/secret/#\n\
                pattern read devices/%c/#\npattern write devices/%c/state\n";
    let table = AclTable::parse(text).expect("the ACL");
    let who = Identity { client_id: "phone-1", username: Some("alice") };
    let user = table.resolve(who.username);
    c.bench_function("acl_may_read_pattern_hit", |b| {
        b.iter(|| black_box(table.may_read(user, who, black_box("devices/phone-1/battery"))))
    });
    c.bench_function("acl_may_read_denied", |b| {
        b.iter(|| black_box(table.may_read(user, who, black_box("sensors/secret/temperature"))))
    });
}

criterion_group!(benches, verification, acl_check);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
