//! Persistence against the real binary, with Mosquitto's clients (written by others):
//! a `mosquitto_sub -c` subscriber (CleanSession=0) gets the QoS 1 messages published while it
//! was offline across a restart of the broker, whether the broker stopped cleanly (SIGTERM)
//! or was killed (SIGKILL, `kill -9`), and a retained message survives too. Each client run is
//! bounded by its own `-W` timeout.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::Broker;

/// A fresh directory for one test's journal, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ringmq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debug logs, for the "closing" line each connection's close gives.
fn persistent_broker(dir: &DataDir, workers: &str) -> Broker {
    Broker::start(&[
        "--persistence",
        "true",
        "--persistence-dir",
        dir.path(),
        "--workers",
        workers,
        "--log-level",
        "debug",
    ])
}

fn run(program: &str, broker: &Broker, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("run {program} (apt-get install mosquitto-clients): {error}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}\nbroker log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        broker.log_tail()
    );
    output
}

fn lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> =
        String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Subscribes `client_id` persistently to `filter` at QoS 1 and disconnects at once.
fn subscribe_and_leave(broker: &Broker, client_id: &str, filter: &str) {
    run(
        "mosquitto_sub",
        broker,
        &["-c", "-i", client_id, "-q", "1", "-t", filter, "-E", "-W", "10"],
    );
}

fn publish(broker: &Broker, topic: &str, message: &str, retain: bool) {
    let mut args = vec!["-q", "1", "-t", topic, "-m", message];
    if retain {
        args.push("-r");
    }
    run("mosquitto_pub", broker, &args);
}

/// The shared scenario: subscribe, leave, publish three QoS 1 messages and a retained one,
/// stop the broker with `stop`, restart it, and check the subscriber and the retained message.
fn messages_survive(name: &str, workers: &str, stop: impl FnOnce(Broker)) {
    let dir = DataDir::new(name);
    let broker = persistent_broker(&dir, workers);
    subscribe_and_leave(&broker, "persist-sub", "offline/#");
    for n in 1..=3 {
        publish(&broker, &format!("offline/{n}"), &format!("message-{n}"), false);
    }
    publish(&broker, "kept/state", "on", true);
    stop(broker);

    let broker = persistent_broker(&dir, workers);
    // Queued for the session while it was offline [MQTT-3.1.2-5]; its client id and
    // CleanSession=0 resume it [MQTT-3.1.2-4].
    let got = run(
        "mosquitto_sub",
        &broker,
        &["-c", "-i", "persist-sub", "-q", "1", "-t", "offline/#", "-v", "-C", "3", "-W", "10"],
    );
    assert_eq!(
        lines(&got),
        ["offline/1 message-1", "offline/2 message-2", "offline/3 message-3"],
        "broker log:\n{}",
        broker.log_tail()
    );
    let retained = run("mosquitto_sub", &broker, &["-t", "kept/#", "-v", "-C", "1", "-W", "10"]);
    assert_eq!(lines(&retained), ["kept/state on"], "[MQTT-3.3.1-6] after a restart");
    // Acknowledged by the subscriber now: nothing comes back after a clean restart. The
    // subscriber's PUBACKs went before its DISCONNECT on one connection, so once the broker
    // has handled both clients' DISCONNECTs it has handled the PUBACKs, and a clean stop
    // leaves them journalled. (After a kill -9 right behind the PUBACKs, a QoS 1 message may
    // rightly come again: QoS 1 is at least once.)
    assert!(
        broker.wait_for_log("client sent DISCONNECT", 2, Duration::from_secs(10)),
        "the broker did not log both clients' DISCONNECT:\n{}",
        broker.log_tail()
    );
    broker.stop();
    let broker = persistent_broker(&dir, workers);
    let again = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-c", "-i", "persist-sub", "-q", "1", "-t", "offline/#", "-v", "-W", "2"])
        .output()
        .expect("run mosquitto_sub");
    assert!(lines(&again).is_empty(), "acknowledged messages came back: {:?}", lines(&again));
}

#[test]
fn a_persistent_session_and_a_retained_message_survive_a_clean_restart() {
    messages_survive("clean-restart", "2", |broker| {
        broker.stop();
    });
}

#[test]
fn a_persistent_session_and_a_retained_message_survive_kill_9() {
    // Dropping the broker is SIGKILL: nothing runs in the broker after it.
    messages_survive("kill-9", "2", drop);
}

#[test]
fn sessions_are_rehomed_when_the_worker_count_changes() {
    let dir = DataDir::new("rehome");
    let broker = persistent_broker(&dir, "1");
    for n in 0..6 {
        subscribe_and_leave(&broker, &format!("rehome-{n}"), "r/#");
    }
    publish(&broker, "r/x", "for-everyone", false);
    drop(broker);
    let broker = persistent_broker(&dir, "3");
    for n in 0..6 {
        let got = run(
            "mosquitto_sub",
            &broker,
            &[
                "-c",
                "-i",
                &format!("rehome-{n}"),
                "-q",
                "1",
                "-t",
                "r/#",
                "-v",
                "-C",
                "1",
                "-W",
                "10",
            ],
        );
        assert_eq!(lines(&got), ["r/x for-everyone"], "session rehome-{n}");
    }
}

#[test]
fn a_damaged_journal_is_reported_and_the_broker_still_starts() {
    let dir = DataDir::new("damaged");
    let broker = persistent_broker(&dir, "1");
    subscribe_and_leave(&broker, "damaged-sub", "d/#");
    publish(&broker, "d/1", "one", false);
    drop(broker);
    // Flip a byte near the end of the only worker's newest file.
    let file = newest_journal_file(&dir.0);
    let mut bytes = std::fs::read(&file).expect("read the journal");
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write the journal");
    let broker = persistent_broker(&dir, "1");
    // Recovery stopped at the damaged record and said so; the session before it is intact.
    let log = broker.log_tail();
    assert!(log.contains("dropping the rest of a journal file"), "no report of the damage:\n{log}");
    // The flipped byte is in the last record, the queued message's entry: the session and
    // its subscription before it are intact, so a message published now is queued for it.
    publish(&broker, "d/2", "two", false);
    let got = run(
        "mosquitto_sub",
        &broker,
        &["-c", "-i", "damaged-sub", "-q", "1", "-t", "d/#", "-v", "-C", "1", "-W", "10"],
    );
    assert_eq!(lines(&got), ["d/2 two"]);
}

fn newest_journal_file(dir: &Path) -> PathBuf {
    let epoch = std::fs::read_dir(dir)
        .expect("the data dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .max()
        .expect("an epoch directory");
    std::fs::read_dir(&epoch)
        .expect("the epoch dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .max()
        .expect("a journal file")
}
