//! The README's flow with Mosquitto's command-line clients (Debian's `mosquitto-clients`,
//! installed by scripts/test.sh): `mosquitto_sub -t 'a/#' -v -C n` and `mosquitto_pub -t a/b
//! -m hi`, at QoS 0, 1 and 2 and retained. Each run of a client is bounded: its own `-W`
//! timeout, and a kill by PID if it outlives ours.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::Broker;

/// How long a Mosquitto client may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `mosquitto_sub` with `-d`, its standard output read line by line.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
    /// Everything it printed so far.
    seen: Vec<String>,
}

impl Subscriber {
    /// Starts `mosquitto_sub` against `broker` with `args`, and waits until the broker has
    /// acknowledged its subscription (the `-d` line "received SUBACK").
    fn start(broker: &Broker, args: &[&str]) -> Self {
        // Piped, its standard output would be block-buffered and the SUBACK line would show
        // only at exit; coreutils' stdbuf makes it line-buffered.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-d",
                "-W",
                "10",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("run mosquitto_sub (apt-get install mosquitto-clients): {error}")
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut subscriber = Self { child, lines, seen: Vec::new() };
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !subscriber.seen.iter().any(|line| line.contains("received SUBACK")) {
            match subscriber.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => subscriber.seen.push(line),
                Err(error) => {
                    // Disconnected: it exited (127 from stdbuf: mosquitto_sub not installed).
                    let status = subscriber.child.try_wait();
                    panic!(
                        "no SUBACK for mosquitto_sub ({error:?}, exit {status:?}): {:?}",
                        subscriber.seen
                    )
                }
            }
        }
        subscriber
    }

    /// Waits for it to exit 0 (it stops by itself after `-C n` messages) and returns the
    /// message lines it printed (the `-d` lines left out).
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("mosquitto_sub still running after {CLIENT_TIMEOUT:?}: {:?}", self.seen);
                }
            }
        }
        let status = wait_exit(&mut self.child, "mosquitto_sub");
        assert!(status.success(), "mosquitto_sub exited with {status}: {:?}", self.seen);
        // `-d` adds "Client ... sending/received ..." and "Subscribed (mid: 1): 0" lines.
        let debug =
            |line: &&String| line.starts_with("Client ") || line.starts_with("Subscribed (");
        self.seen.iter().filter(|line| !debug(line)).cloned().collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) for `child` to exit; kills it by PID and panics if it does not.
fn wait_exit(child: &mut Child, name: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait on a child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} still running after {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `mosquitto_pub` against `broker` with `args`; panics unless it exits 0.
fn publish(broker: &Broker, args: &[&str]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("run mosquitto_pub (apt-get install mosquitto-clients): {error}")
        });
    let status = wait_exit(&mut child, "mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {args:?} exited with {status}");
}

/// The README's example, exactly.
#[test]
fn readme_flow_subscriber_prints_topic_and_payload() {
    let broker = Broker::start(&[]);
    let subscriber = Subscriber::start(&broker, &["-t", "a/#", "-v", "-C", "1"]);
    publish(&broker, &["-t", "a/b", "-m", "hi"]);
    assert_eq!(subscriber.finish(), ["a/b hi"]);
}

/// QoS 0, 1 and 2 from mosquitto_pub to a QoS 2 mosquitto_sub: each arrives at the QoS it
/// was published with [MQTT-3.8.4-6], unretained, exactly once.
///
/// Each `mosquitto_pub` is its own client, and with several workers their connections may
/// land on different workers, so the three messages can arrive in any order: MQTT orders
/// messages per publishing client and topic, not across clients (section 4.6). The
/// comparison is therefore of the sorted lines.
#[test]
fn qos_0_1_and_2_with_mosquitto_clients() {
    let broker = Broker::start(&[]);
    let subscriber =
        Subscriber::start(&broker, &["-t", "a/#", "-q", "2", "-C", "3", "-F", "%t %q %r %p"]);
    publish(&broker, &["-t", "a/zero", "-m", "q0"]);
    publish(&broker, &["-t", "a/one", "-m", "q1", "-q", "1"]);
    publish(&broker, &["-t", "a/two", "-m", "q2", "-q", "2"]);
    let mut seen = subscriber.finish();
    seen.sort();
    assert_eq!(seen, ["a/one 1 0 q1", "a/two 2 0 q2", "a/zero 0 0 q0"]);
}

/// `mosquitto_pub -r`: a subscriber that comes later gets the message with RETAIN=1
/// [MQTT-3.3.1-6] [MQTT-3.3.1-8]; `-r -n` (an empty retained message) deletes it
/// [MQTT-3.3.1-10], so the next subscriber's first message is a later ordinary one.
#[test]
fn retained_with_mosquitto_clients() {
    let broker = Broker::start(&[]);
    publish(&broker, &["-t", "a/b", "-m", "kept", "-r", "-q", "1"]);
    let late = Subscriber::start(&broker, &["-t", "a/#", "-C", "1", "-F", "%r %t %p"]);
    assert_eq!(late.finish(), ["1 a/b kept"]);

    publish(&broker, &["-t", "a/b", "-n", "-r", "-q", "1"]);
    let after = Subscriber::start(&broker, &["-t", "a/#", "-C", "1", "-F", "%r %t %p"]);
    publish(&broker, &["-t", "a/marker", "-m", "marker"]);
    assert_eq!(after.finish(), ["0 a/marker marker"], "the deleted retained message came back");
}
