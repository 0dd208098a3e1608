//! Seeded randomized simulation of the broker core (issue 3): thousands of clients over one to
//! four workers, with a fake clock, delayed cross-worker links, slow sockets, crashes and
//! takeovers, checked against a model of MQTT 3.1.1's delivery promises.
//!
//! Replay one seed:   `SIM_SEED=123 cargo test --test simulation -- --nocapture`
//! Run more seeds:    `SIM_SEEDS=200 cargo test --test simulation -- --nocapture`
//! (`SIM_SEEDS` runs seeds 1..=N; `SIM_CLIENTS` / `SIM_STEPS` change the size of a run.)
//! Trace clients:     `SIM_TRACE=150,191` prints those clients' packets, handoffs and links
//!                    (`SIM_TRACE=` alone: every client).
//!
//! The second half of this file tests the checker itself: each property is shown to fail when
//! the thing it guards against is injected.

mod sim;

use std::panic::{self, AssertUnwindSafe};

use ringmq::protocol::QoS;
use sim::model::{
    decode_payload, encode_payload, filter_matches, Cause, MessageKey, Model, Universe,
};
use sim::runtime::Fault;
use sim::{Mode, Report, Sim, SimConfig, Size};

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// The seeds to run: `SIM_SEED` alone, else 1..=`SIM_SEEDS`, else the default set.
fn seeds(default: &[u64]) -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    if let Some(count) = env_u64("SIM_SEEDS") {
        return (1..=count).collect();
    }
    default.to_vec()
}

fn size(default: Size) -> Size {
    Size {
        clients: env_u64("SIM_CLIENTS").map_or(default.clients, |c| c as usize),
        steps: env_u64("SIM_STEPS").unwrap_or(default.steps),
    }
}

/// Runs every seed; a failure (or a panic inside the broker) names its seed and how to replay.
fn run_seeds(test: &str, mode: Mode, default_seeds: &[u64], default_size: Size) {
    let size = size(default_size);
    let mut failures = Vec::new();
    for seed in seeds(default_seeds) {
        let replay = format!(
            "replay: SIM_SEED={seed} SIM_CLIENTS={} SIM_STEPS={} cargo test --test simulation \
             {test} -- --nocapture",
            size.clients, size.steps
        );
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| sim::run_seed(seed, mode, size)));
        match outcome {
            Ok((report, Ok(()))) => println!(
                "seed {seed} ok: {} published (QoS0/1/2 {:?}), {} acked, {} deliveries, {} \
                 expectations checked, {} unsubscribed in transit (accepted), {} interest-window losses \
                 (#3), {} connects, {} crashes, \
                 {} takeovers, {} handoffs, {} remote msgs, wills armed/published/discarded \
                 {}/{}/{}, output peak {}B, closes {:?}, \
                 unchecked {:?}",
                report.model.published.iter().sum::<u64>(),
                report.model.published,
                report.model.acknowledged,
                report.model.deliveries,
                report.model.expected_checked,
                report.missing.iter().filter(|m| m.cause == Cause::TransitWindow).count(),
                report.missing.iter().filter(|m| m.cause == Cause::InterestWindow).count(),
                report.connects,
                report.crashes,
                report.takeovers,
                report.runtime.handoffs,
                report.runtime.remote_messages,
                report.model.wills_armed,
                report.model.wills_published,
                report.model.wills_discarded,
                report.runtime.output_bytes_peak,
                report.runtime.closes,
                report.unchecked,
            ),
            Ok((_, Err(why))) => {
                eprintln!("SIMULATION FAILED\n{why}\n{replay}");
                failures.push(seed);
            }
            Err(panic) => {
                eprintln!("SIMULATION PANICKED at seed {seed}\n{replay}");
                panic::resume_unwind(panic);
            }
        }
    }
    assert!(failures.is_empty(), "simulation failed for seeds {failures:?} (replay lines above)");
}

/// Generous bounds: nothing acknowledged may be lost, nothing duplicated at QoS 2, nothing
/// reordered, nothing left behind.
#[test]
fn simulation_generous_bounds() {
    let size = Size { clients: 1500, steps: 15_000 };
    run_seeds("simulation_generous_bounds", Mode::Generous, &[1, 2, 3], size);
}

/// Many short runs: more distinct schedules (worker counts, link delays, wire modes) than the
/// long runs, which is what finds cross-worker races such as SIM_FINDINGS.md #3 (on main
/// 2081498 it hits seeds 2, 46, 59, 71, 99, 115, 130: 10 of seeds 1..=200 at this size).
#[test]
fn simulation_many_short_runs() {
    let size = Size { clients: 200, steps: 2000 };
    let seeds: Vec<u64> = (101..=140).chain([2, 46, 59, 71, 99]).collect();
    run_seeds("simulation_many_short_runs", Mode::Generous, &seeds, size);
}

/// Tiny bounds: every bound holds and every lost message is counted.
#[test]
fn simulation_tiny_bounds() {
    let size = Size { clients: 400, steps: 6000 };
    run_seeds("simulation_tiny_bounds", Mode::Tiny, &[11, 12], size);
}

/// Retained messages across workers (docs/ARCHITECTURE.md, "Cross-worker semantics"): 15% of
/// the QoS 1/2 publishes are retained, over 2 to 4 workers and slow links. A RETAIN=1 delivery
/// is never older than a retained message acknowledged before the SUBSCRIBE, every
/// subscription held to the end got its topics' retained messages, and the replicas agree.
#[test]
fn simulation_retained_messages_are_in_effect_once_acknowledged() {
    let size = size(Size { clients: 300, steps: 3000 });
    let mut failures = Vec::new();
    for seed in seeds(&[201, 202, 203, 204, 205, 206]) {
        let mut config = SimConfig::from_seed(seed, Mode::Generous, size.clients, size.steps);
        config.workers = 2 + (seed % 3) as u16;
        config.knobs.link_delay_steps_max = 30;
        config.retain_per_mille = 150;
        let workers = config.workers;
        let report = Sim::new(config).run();
        let model = &report.model;
        println!(
            "seed {seed}, {workers} workers: {} retained published, {} retained deliveries, {} \
             retained expectations",
            model.retained_published, model.retained_deliveries, model.retained_expected
        );
        assert!(model.retained_deliveries > 0 && model.retained_expected > 0, "seed {seed}: idle");
        if let Err(why) = sim::judge(&report, Mode::Generous) {
            eprintln!(
                "SIMULATION FAILED (seed {seed})\n{why}\nreplay: SIM_SEED={seed} cargo test \
                 --test simulation simulation_retained -- --nocapture"
            );
            failures.push(seed);
        }
    }
    assert!(failures.is_empty(), "retained simulation failed for seeds {failures:?}");
}

/// A fuzz target's way in: every choice from input bytes; when they run out the run winds
/// down and settles.
#[test]
fn simulation_runs_from_fuzzer_bytes() {
    let mut source = sim::rng::Rng::from_seed(9);
    let bytes: Vec<u8> = (0..16_384).map(|_| source.next_u64() as u8).collect();
    let config = SimConfig::from_seed(3, Mode::Generous, 40, 100_000);
    let report = Sim::with_rng(config, sim::rng::Rng::from_bytes(bytes)).run();
    assert!(report.quiesced);
    assert!(report.connects > 0 && report.model.deliveries > 0, "{:?}", report.model);
    sim::judge(&report, Mode::Generous).expect("a fuzzer-driven run passes");
}

/// Runs a `sim` fuzz target input as the target does (`fuzz/src/sim.rs`, `check_sim`): the first
/// byte seeds the configuration, the rest make every choice.
fn replay_sim_input(data: &[u8]) -> Report {
    let (&first, choices) = data.split_first().expect("the input is not empty");
    let config = SimConfig::from_seed(u64::from(first), Mode::Generous, 20, 400);
    Sim::with_rng(config, sim::rng::Rng::from_bytes(choices.to_vec())).run()
}

/// The `sim` fuzz target's finding `sim-qos2-duplicate-c8ac53a1` (session 4), replayed as the
/// target runs it. Client 2 (persistent) wrote CONNECT and QoS 2 PUBLISHes (ids 1, 2) on a
/// connection, gave it up unread and unclosed, re-sent them with DUP=1 on a new connection
/// [MQTT-4.4.0-1] and completed both flows there (PUBREL, PUBCOMP). The first connection's
/// bytes reached the broker only then: its CONNECT took the session over [MQTT-3.1.4-2] and
/// its PUBLISH id 1 (DUP=0) came after the broker's PUBCOMP 1, so the broker had to take it as
/// a new publication [MQTT-4.3.3-2] and client 6 got the message a second time. The broker was
/// right; the model counted exactly once per message instead of once per publication.
#[test]
fn fuzz_finding_a_publish_arriving_after_its_pubcomp_is_a_new_publication_mqtt_4_3_3_2() {
    let report = replay_sim_input(include_bytes!("../fuzz/corpus/sim/sim-qos2-duplicate-c8ac53a1"));
    assert!(report.runtime.qos2_republications >= 1, "{:?}", report.runtime);
    sim::judge(&report, Mode::Generous).expect("a second publication may be delivered again");
}

/// The `sim` fuzz target's finding `sim-qos0-order-36493db8` (session 5): client 0 wrote a
/// QoS 0 PUBLISH (seq 1) on a connection it then gave up unclosed, connected anew and
/// published seq 2 there; the first connection's bytes reached the broker later (its CONNECT
/// took the session over [MQTT-3.1.4-2]), so the broker received seq 2 before seq 1 and sent
/// them on in that order, as [MQTT-4.6.0-6] asks ("in the order that they were received").
/// The model checked publish order instead of the order the broker received them.
#[test]
fn fuzz_finding_order_is_the_order_the_broker_received_mqtt_4_6_0_6() {
    let report = replay_sim_input(include_bytes!("../fuzz/corpus/sim/sim-qos0-order-36493db8"));
    sim::judge(&report, Mode::Generous).expect("receipt order is kept");
}

/// The `sim` fuzz target's finding `sim-late-subscribe-ff9f2a24` (session 6), replayed as the
/// target runs it. Persistent client 13 wrote CONNECT and SUBSCRIBE t/1/1 on a connection and
/// gave it up unread and unclosed; on its next connection it subscribed to t/1/1 again (SUBACK
/// read), then unsubscribed (UNSUBACK read). Only then did the first connection's bytes reach
/// the broker: its CONNECT took the session over [MQTT-3.1.4-2] and its SUBSCRIBE, the last
/// request for t/1/1 the broker processed, subscribed that same session [MQTT-3.1.2-4]
/// [MQTT-3.8.4-1] (its SUBACK was never read). The broker rightly ended holding t/1/1; the
/// model applied requests in the order the client sent them, and only those answered. It now
/// applies the requests the brokers processed, in the order they processed them.
#[test]
fn fuzz_finding_a_late_subscribe_from_an_abandoned_connection_holds_mqtt_3_1_2_4() {
    let report = replay_sim_input(include_bytes!("../fuzz/corpus/sim/sim-late-subscribe-ff9f2a24"));
    assert!(report.model.requests_processed_late >= 1, "{:?}", report.model);
    sim::judge(&report, Mode::Generous).expect("the request the broker processed last decides");
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests: each shows a property failing when its fault is injected, first
// end to end (a deliberately broken runtime under the real brokers), then on the model alone.

fn run_with_fault(fault: Option<Fault>) -> (Report, Result<(), String>) {
    let mut config = SimConfig::from_seed(77, Mode::Generous, 300, 3000);
    config.workers = 3;
    config.knobs.link_delay_steps_max = 30;
    config.knobs.fault = fault;
    let report = Sim::new(config).run();
    let verdict = sim::judge(&report, Mode::Generous);
    (report, verdict)
}

/// The control: without the fault, the seed shows none of the signatures the fault tests look
/// for, so those come from the fault. (Only these: a broker bug found elsewhere, such as
/// SIM_FINDINGS.md #3, must not make the checker's own tests fail.)
#[test]
fn simulation_without_a_fault_shows_no_fault_signature() {
    let (report, _) = run_with_fault(None);
    assert!(report.runtime.remote_publishes > 100, "the seed must route across workers");
    let unexplained: Vec<_> =
        report.missing.iter().filter(|m| m.cause == Cause::Unexplained).collect();
    assert!(unexplained.is_empty(), "{unexplained:?}");
    let signatures = ["MQTT-4.3.3-2", "MQTT-4.6.0-6"];
    let hits: Vec<_> =
        report.violations.iter().filter(|v| signatures.iter().any(|s| v.contains(s))).collect();
    assert!(hits.is_empty(), "{hits:?}");
}

#[test]
fn simulation_catches_a_runtime_that_loses_remote_publishes() {
    let (report, verdict) = run_with_fault(Some(Fault::Lose(7)));
    assert!(report.runtime.faults_applied > 0, "the seed must give the fault a chance");
    let why = verdict.expect_err("a lost cross-worker publish must fail the run");
    assert!(why.contains("Unexplained"), "{why}");
}

#[test]
fn simulation_catches_a_runtime_that_duplicates_remote_publishes() {
    let (report, verdict) = run_with_fault(Some(Fault::Duplicate(3)));
    assert!(report.runtime.faults_applied > 0, "the seed must give the fault a chance");
    let why = verdict.expect_err("a duplicated QoS 2 publish must fail the run");
    assert!(why.contains("MQTT-4.3.3-2"), "{why}");
}

#[test]
fn simulation_catches_a_runtime_that_reorders_a_link() {
    let (report, verdict) = run_with_fault(Some(Fault::Reorder(1)));
    assert!(report.runtime.faults_applied > 0, "the seed must give the fault a chance");
    let why = verdict.expect_err("a reordered link must fail the run");
    assert!(why.contains("MQTT-4.6.0-6"), "{why}");
}

const SUBSCRIBER: usize = 0;
const PUBLISHER: usize = 1;

fn model() -> Model {
    // Topics 0 and 1 are published to, topic 2 carries wills; filters 0..=3.
    let universe = Universe::new(
        vec!["t/0/0".into(), "t/0/1".into(), "will/0".into()],
        2,
        vec!["t/0/0".into(), "t/0/+".into(), "t/0/1".into(), "will/0".into()],
    );
    // Client 0 is a persistent subscriber, client 1 a clean publisher.
    Model::new(universe, &[true, false])
}

fn key(seq: u32) -> MessageKey {
    MessageKey { publisher: PUBLISHER as u32, topic: 0, seq }
}

fn payload(seq: u32, qos: QoS) -> Vec<u8> {
    encode_payload(key(seq), qos, 3)
}

fn subscribed(model: &mut Model, granted: QoS) {
    let ticket = model.subscribe_sent(SUBSCRIBER, 0, granted);
    model.request_processed(SUBSCRIBER, &[ticket]);
    model.subscribe_acked(SUBSCRIBER, 0, Some(granted), ticket);
}

fn published(model: &mut Model, seq: u32, qos: QoS) {
    model.publish_sent(key(seq), qos);
    model.publish_received(key(seq));
    if qos != QoS::AtMostOnce {
        model.publish_acked(key(seq));
    }
}

#[test]
fn model_reports_an_acknowledged_message_that_never_arrived() {
    let mut model = model();
    subscribed(&mut model, QoS::AtLeastOnce);
    published(&mut model, 1, QoS::AtLeastOnce);
    published(&mut model, 2, QoS::ExactlyOnce);
    model.delivered(SUBSCRIBER, "t/0/0", &payload(2, QoS::ExactlyOnce), QoS::AtLeastOnce, false);
    let missing = model.missing(&[0, 0], |_| 1);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].key, key(1));
    assert!(model.violations.is_empty(), "{:?}", model.violations);
}

#[test]
fn model_expects_nothing_outside_the_subscription_window_or_at_qos0() {
    let mut model = model();
    // Published before the SUBACK arrived: the subscription did not surely exist yet.
    let ticket = model.subscribe_sent(SUBSCRIBER, 0, QoS::ExactlyOnce);
    model.publish_sent(key(1), QoS::AtLeastOnce);
    model.request_processed(SUBSCRIBER, &[ticket]);
    model.subscribe_acked(SUBSCRIBER, 0, Some(QoS::ExactlyOnce), ticket);
    model.publish_acked(key(1));
    // Never acknowledged to its publisher.
    model.publish_sent(key(2), QoS::AtLeastOnce);
    // Acknowledged after the UNSUBSCRIBE went out.
    model.publish_sent(key(3), QoS::AtLeastOnce);
    model.unsubscribe_sent(SUBSCRIBER, 0);
    model.publish_acked(key(3));
    assert!(model.missing(&[0, 0], |_| 1).is_empty());
    // A QoS 0 grant makes the delivery QoS 0: it may be lost.
    subscribed(&mut model, QoS::AtMostOnce);
    published(&mut model, 4, QoS::ExactlyOnce);
    assert!(model.missing(&[0, 0], |_| 1).is_empty());
}

#[test]
fn model_lets_the_latest_request_decide_a_filter() {
    // SUBSCRIBE, UNSUBSCRIBE, then the SUBACK: the broker ends unsubscribed.
    let mut model = model();
    let ticket = model.subscribe_sent(SUBSCRIBER, 0, QoS::AtLeastOnce);
    let unsubscribe = model.unsubscribe_sent(SUBSCRIBER, 0);
    model.request_processed(SUBSCRIBER, &[ticket]);
    model.request_processed(SUBSCRIBER, &[unsubscribe]);
    model.subscribe_acked(SUBSCRIBER, 0, Some(QoS::AtLeastOnce), ticket);
    assert_eq!(model.acked_filters(SUBSCRIBER), Vec::<u16>::new());
    assert_eq!(model.held_filters(SUBSCRIBER), Vec::<u16>::new());
    // SUBSCRIBE twice; the first SUBACK does not open the subscription, the second does.
    let first = model.subscribe_sent(SUBSCRIBER, 0, QoS::AtLeastOnce);
    let second = model.subscribe_sent(SUBSCRIBER, 0, QoS::AtLeastOnce);
    model.request_processed(SUBSCRIBER, &[first]);
    model.request_processed(SUBSCRIBER, &[second]);
    model.subscribe_acked(SUBSCRIBER, 0, Some(QoS::AtLeastOnce), first);
    published(&mut model, 1, QoS::AtLeastOnce);
    model.subscribe_acked(SUBSCRIBER, 0, Some(QoS::AtLeastOnce), second);
    published(&mut model, 2, QoS::AtLeastOnce);
    assert_eq!(model.acked_filters(SUBSCRIBER), vec![0]);
    assert_eq!(model.held_filters(SUBSCRIBER), vec![0]);
    let missing: Vec<u32> = model.missing(&[0, 0], |_| 1).iter().map(|m| m.key.seq).collect();
    assert_eq!(missing, vec![2], "only the publish after the deciding SUBACK is expected");
}

#[test]
fn model_reports_a_qos2_message_delivered_twice() {
    let mut model = model();
    subscribed(&mut model, QoS::ExactlyOnce);
    published(&mut model, 1, QoS::ExactlyOnce);
    model.delivered(SUBSCRIBER, "t/0/0", &payload(1, QoS::ExactlyOnce), QoS::ExactlyOnce, false);
    assert!(model.violations.is_empty());
    model.delivered(SUBSCRIBER, "t/0/0", &payload(1, QoS::ExactlyOnce), QoS::ExactlyOnce, true);
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(model.violations[0].contains("MQTT-4.3.3-2"), "{:?}", model.violations);
}

#[test]
fn model_allows_one_qos2_delivery_per_publication_and_no_more_mqtt_4_3_3_2() {
    let mut model = model();
    subscribed(&mut model, QoS::ExactlyOnce);
    published(&mut model, 1, QoS::ExactlyOnce);
    let deliver = |model: &mut Model| {
        let bytes = payload(1, QoS::ExactlyOnce);
        model.delivered(SUBSCRIBER, "t/0/0", &bytes, QoS::ExactlyOnce, false);
    };
    model.publication_received(key(1));
    deliver(&mut model);
    // The same message fed again after the broker's PUBCOMP freed its id: a new publication,
    // which the broker delivers again.
    model.publication_received(key(1));
    deliver(&mut model);
    assert!(model.violations.is_empty(), "{:?}", model.violations);
    deliver(&mut model);
    assert_eq!(model.violations.len(), 1, "three deliveries of two: {:?}", model.violations);
    assert!(model.violations[0].contains("delivery 3 of 2"), "{:?}", model.violations);
    assert!(model.violations[0].contains("MQTT-4.3.3-2"), "{:?}", model.violations);
}

#[test]
fn model_reports_a_second_qos2_delivery_of_one_publication_mqtt_4_3_3_2() {
    let mut model = model();
    subscribed(&mut model, QoS::ExactlyOnce);
    published(&mut model, 1, QoS::ExactlyOnce);
    model.publication_received(key(1));
    for dup in [false, true] {
        let bytes = payload(1, QoS::ExactlyOnce);
        model.delivered(SUBSCRIBER, "t/0/0", &bytes, QoS::ExactlyOnce, dup);
    }
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(model.violations[0].contains("delivery 2 of 1"), "{:?}", model.violations);
}

#[test]
fn model_allows_qos1_duplicates_but_not_qos0_ones() {
    let mut model = model();
    subscribed(&mut model, QoS::ExactlyOnce);
    published(&mut model, 1, QoS::AtLeastOnce);
    for dup in [false, true] {
        model.delivered(SUBSCRIBER, "t/0/0", &payload(1, QoS::AtLeastOnce), QoS::AtLeastOnce, dup);
    }
    assert!(model.violations.is_empty(), "{:?}", model.violations);
    assert_eq!(model.stats.duplicates_qos1, 1);
    published(&mut model, 2, QoS::AtMostOnce);
    for _ in 0..2 {
        model.delivered(SUBSCRIBER, "t/0/0", &payload(2, QoS::AtMostOnce), QoS::AtMostOnce, false);
    }
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
}

#[test]
fn model_reports_reordering_per_publisher_and_topic() {
    let mut model = model();
    subscribed(&mut model, QoS::AtLeastOnce);
    for seq in 1..=3 {
        published(&mut model, seq, QoS::AtLeastOnce);
    }
    for seq in [1, 3, 2] {
        let bytes = payload(seq, QoS::AtLeastOnce);
        model.delivered(SUBSCRIBER, "t/0/0", &bytes, QoS::AtLeastOnce, false);
    }
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(model.violations[0].contains("MQTT-4.6.0-6"), "{:?}", model.violations);
}

#[test]
fn model_orders_by_receipt_at_the_broker_not_by_publish_mqtt_4_6_0_6() {
    let mut model = model();
    subscribed(&mut model, QoS::AtMostOnce);
    for seq in [1, 2, 3] {
        model.publish_sent(key(seq), QoS::AtMostOnce);
    }
    // 1 was written on a connection the publisher gave up; its bytes arrived last.
    for seq in [2, 3, 1] {
        model.publish_received(key(seq));
    }
    for seq in [2, 1, 3] {
        let bytes = payload(seq, QoS::AtMostOnce);
        model.delivered(SUBSCRIBER, "t/0/0", &bytes, QoS::AtMostOnce, false);
    }
    // 1 after 2 is right (received after it); 3 after 1 is not (received before it).
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(model.violations[0].contains("seq: 3"), "{:?}", model.violations);
}

#[test]
fn model_ignores_order_of_messages_the_publisher_retransmitted() {
    // A re-sent PUBLISH is a new packet after the ones sent since: it may arrive after them.
    let mut model = model();
    subscribed(&mut model, QoS::AtLeastOnce);
    published(&mut model, 1, QoS::AtLeastOnce);
    published(&mut model, 2, QoS::AtLeastOnce);
    model.publish_resent(key(1));
    for seq in [2, 1] {
        let bytes = payload(seq, QoS::AtLeastOnce);
        model.delivered(SUBSCRIBER, "t/0/0", &bytes, QoS::AtLeastOnce, false);
    }
    assert!(model.violations.is_empty(), "{:?}", model.violations);
}

#[test]
fn model_reports_deliveries_nobody_asked_for_or_never_published() {
    let mut model = model();
    published(&mut model, 1, QoS::AtLeastOnce);
    model.delivered(SUBSCRIBER, "t/0/0", &payload(1, QoS::AtLeastOnce), QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 1, "no subscription: {:?}", model.violations);
    subscribed(&mut model, QoS::AtLeastOnce);
    model.delivered(SUBSCRIBER, "t/0/0", &payload(9, QoS::AtLeastOnce), QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 2, "never published: {:?}", model.violations);
    model.delivered(SUBSCRIBER, "t/0/1", &payload(1, QoS::AtLeastOnce), QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 3, "wrong topic: {:?}", model.violations);
    published(&mut model, 2, QoS::AtLeastOnce);
    model.delivered(SUBSCRIBER, "t/0/0", &payload(2, QoS::AtLeastOnce), QoS::ExactlyOnce, false);
    assert_eq!(model.violations.len(), 4, "QoS upgraded: {:?}", model.violations);
    model.delivered(SUBSCRIBER, "$SYS/broker/uptime", b"12", QoS::AtMostOnce, false);
    assert_eq!(model.violations.len(), 5, "$SYS without asking: {:?}", model.violations);
}

#[test]
fn model_forgets_a_clean_session_at_its_end() {
    // Client 1 is clean: after its session ends it must ask again before it gets anything.
    let mut model = model();
    model.session_started(PUBLISHER);
    let ticket = model.subscribe_sent(PUBLISHER, 1, QoS::AtLeastOnce);
    model.request_processed(PUBLISHER, &[ticket]);
    model.subscribe_acked(PUBLISHER, 1, Some(QoS::AtLeastOnce), ticket);
    let other = MessageKey { publisher: SUBSCRIBER as u32, topic: 0, seq: 1 };
    model.publish_sent(other, QoS::AtLeastOnce);
    model.publish_acked(other);
    model.session_ended(PUBLISHER);
    assert!(model.missing(&[0, 0], |_| 1).is_empty(), "a clean session that ended expects nothing");
    model.session_started(PUBLISHER);
    model.connect_accepted(PUBLISHER);
    let bytes = encode_payload(other, QoS::AtLeastOnce, 0);
    model.delivered(PUBLISHER, "t/0/0", &bytes, QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert_eq!(model.acked_filters(PUBLISHER), Vec::<u16>::new());
    assert_eq!(model.held_filters(PUBLISHER), Vec::<u16>::new());
}

#[test]
fn model_matcher_follows_the_topic_rules() {
    // [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1]
    let cases = [
        ("t/#", "t", true),
        ("t/#", "t/a/b", true),
        ("#", "t/a", true),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("$SYS/#", "$SYS/x", true),
        ("t/+", "t/a", true),
        ("t/+", "t/a/b", false),
        ("t/+", "t/", true),
        ("t/a", "t/a/", false),
        ("+/+/+", "t/0/1", true),
    ];
    for (filter, topic, expected) in cases {
        assert_eq!(filter_matches(filter, topic), expected, "{filter} vs {topic}");
    }
}

#[test]
fn payload_carries_its_key() {
    let key = MessageKey { publisher: 7, topic: 3, seq: 99 };
    let bytes = encode_payload(key, QoS::ExactlyOnce, 600);
    assert_eq!(decode_payload(&bytes), Some((key, QoS::ExactlyOnce)));
    assert_eq!(decode_payload(b"nonsense"), None);
}

#[test]
fn rng_is_replayable_and_byte_driven_runs_end() {
    let mut a = sim::rng::Rng::from_seed(42);
    let mut b = sim::rng::Rng::from_seed(42);
    let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
    assert_eq!(first, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
    assert_ne!(first, (0..8).map(|_| sim::rng::Rng::from_seed(43).next_u64()).collect::<Vec<_>>());
    let mut bytes = sim::rng::Rng::from_bytes(vec![1, 2, 3]);
    assert!(!bytes.is_exhausted());
    assert_eq!(bytes.next_u64(), 0x030201);
    assert!(bytes.is_exhausted());
    let after: Vec<u64> = (0..4).map(|_| bytes.next_u64()).collect();
    let mut again = sim::rng::Rng::from_bytes(vec![1, 2, 3]);
    again.next_u64();
    assert_eq!(after, (0..4).map(|_| again.next_u64()).collect::<Vec<_>>());
}

#[test]
fn model_tells_cross_worker_windows_from_losses() {
    // The subscriber lives on worker 1, the publisher on worker 0.
    let homes = [1, 0];
    let mut model = model();
    subscribed(&mut model, QoS::AtLeastOnce);
    // 1 reached worker 1 while subscribed: its loss is a bug.
    published(&mut model, 1, QoS::AtLeastOnce);
    model.arrived(key(1), 1);
    // 2 never reached worker 1, which worker 0 did not know to want it: interest window.
    published(&mut model, 2, QoS::AtLeastOnce);
    // 3 never reached worker 1 although worker 0 knew: a bug.
    published(&mut model, 3, QoS::AtLeastOnce);
    // 4 reached worker 1 after the UNSUBSCRIBE went out: transit window.
    published(&mut model, 4, QoS::AtLeastOnce);
    model.unsubscribe_sent(SUBSCRIBER, 0);
    model.arrived(key(4), 1);
    let reach = |k: &MessageKey| if k.seq == 2 { 0b01 } else { 0b11 };
    let causes: Vec<(u32, Cause)> =
        model.missing(&homes, reach).iter().map(|m| (m.key.seq, m.cause)).collect();
    assert_eq!(
        causes,
        vec![
            (1, Cause::Unexplained),
            (2, Cause::InterestWindow),
            (3, Cause::Unexplained),
            (4, Cause::TransitWindow),
        ]
    );
}

#[test]
fn model_expects_a_published_will_and_forbids_a_discarded_one() {
    // [MQTT-3.1.2-8]: published when the connection ends without DISCONNECT;
    // [MQTT-3.1.2-10]: discarded by DISCONNECT.
    let mut model = model();
    let ticket = model.subscribe_sent(SUBSCRIBER, 3, QoS::AtLeastOnce);
    model.request_processed(SUBSCRIBER, &[ticket]);
    model.subscribe_acked(SUBSCRIBER, 3, Some(QoS::AtLeastOnce), ticket);
    let will = |seq| MessageKey { publisher: PUBLISHER as u32, topic: 2, seq };
    model.will_armed(will(1), QoS::AtLeastOnce);
    model.will_armed(will(2), QoS::AtLeastOnce);
    model.will_armed(will(3), QoS::AtLeastOnce);
    let since = model.now();
    model.will_published(will(1), since);
    model.will_discarded(will(2));
    let missing: Vec<u32> = model.missing(&[0, 0], |_| 1).iter().map(|m| m.key.seq).collect();
    assert_eq!(missing, vec![1], "the published will is expected, the others are not");
    let bytes = encode_payload(will(2), QoS::AtLeastOnce, 0);
    model.delivered(SUBSCRIBER, "will/0", &bytes, QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(model.violations[0].contains("MQTT-3.1.2-10"), "{:?}", model.violations);
    // An armed will may be published by an end the model did not see (e.g. a keepalive).
    let bytes = encode_payload(will(3), QoS::AtLeastOnce, 0);
    model.delivered(SUBSCRIBER, "will/0", &bytes, QoS::AtLeastOnce, false);
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
}
