//! Replays the committed corpora through the same checks as the fuzz targets, without
//! libFuzzer, so a plain `cargo test` here catches a regression on any input the fuzzer kept.
//! Also checks that the seeds themselves pass and that the driver runs a few fixed inputs.
//! An empty corpus directory fails its test: a replay of nothing would check nothing.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use ringmq_fuzz::codec::{check_decode, check_stream};
use ringmq_fuzz::driver::{Driver, Input};

/// Every file in `corpus/<target>`; an empty list if the directory does not exist.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries.map(|entry| std::fs::read(entry.expect("corpus entry").path()).expect("read")).collect()
}

fn run_broker(data: &[u8]) {
    // As libfuzzer-sys builds a typed input; bytes that make no `Input` are skipped there too.
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        Driver::run(&input);
    }
}

#[test]
fn decode_corpus_and_seeds_pass() {
    let seeds = ringmq_fuzz::seeds::decode_seeds();
    for (_, bytes) in &seeds {
        check_decode(bytes);
    }
    let corpus = corpus("decode");
    corpus.iter().for_each(|input| check_decode(input));
    println!("decode: {} seeds, {} corpus inputs", seeds.len(), corpus.len());
}

#[test]
fn decode_stream_corpus_and_seeds_pass() {
    for (_, bytes) in ringmq_fuzz::seeds::stream_seeds() {
        check_stream(&bytes);
    }
    corpus("decode_stream").iter().for_each(|input| check_stream(input));
}

#[test]
fn broker_corpus_passes() {
    let corpus = corpus("broker");
    assert!(!corpus.is_empty(), "the broker corpus is committed");
    corpus.iter().for_each(|input| run_broker(input));
}

#[test]
fn sim_corpus_passes() {
    let corpus = corpus("sim");
    assert!(!corpus.is_empty(), "the sim corpus is committed");
    corpus.iter().for_each(|input| ringmq_fuzz::sim::check_sim(input));
}

/// Fixed pseudo-random inputs, so the driver is exercised even before a corpus exists.
#[test]
fn broker_driver_runs_fixed_inputs() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..200 {
        let data: Vec<u8> = (0..2048)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        run_broker(&data);
    }
}

/// A hand-written run through the driver: two workers, a subscriber and a publisher; the
/// publish must reach the subscriber, through a handoff and the cross-worker link. Shows the
/// driver reaches delivery at all (a driver that never got past CONNECT would fuzz nothing).
#[test]
fn broker_driver_delivers_a_publish_across_workers() {
    use ringmq_fuzz::driver::{Knobs, Op};
    let knobs = Knobs {
        workers: 1,
        packet_bytes: 1000,
        queued_messages: 9,
        queued_bytes: 10_000,
        sessions: 7,
        subscriptions: 4,
        allow_anonymous: true,
        ..Knobs::default()
    };
    let connect = |conn, client| Op::Connect {
        conn,
        client,
        clean: true,
        keepalive: 0,
        will: None,
        user: false,
    };
    let ops = vec![
        Op::Open { worker: 0 },
        connect(0, 1),
        Op::Subscribe { conn: 0, id: 1, count: 0, filters: [(2, 1); 4] },
        // Client "b" lives on worker 1: connected on worker 0, it is handed off.
        Op::Open { worker: 0 },
        connect(1, 2),
        Op::Deliver { link: 1, count: 9 },
        Op::Deliver { link: 2, count: 9 },
        Op::Publish { conn: 1, topic: 1, qos: 1, retain: false, dup: false, id: 5, payload: 10 },
        Op::Deliver { link: 1, count: 9 },
        Op::Deliver { link: 2, count: 9 },
        Op::Sent { conn: 0, bytes: 0 },
        Op::Sent { conn: 1, bytes: 0 },
    ];
    let summary = Driver::run(&Input { knobs, ops });
    assert_eq!(summary.connacks_accepted, 2, "{summary:?}");
    assert_eq!(summary.publishes_delivered, 1, "{summary:?}");
    assert!(summary.handoffs >= 1 && summary.remote_messages >= 1, "{summary:?}");
}
