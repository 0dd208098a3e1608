//! Password files, ACLs and SIGHUP reload with clients we did not write: Mosquitto's
//! `mosquitto_pub`/`mosquitto_sub`, and Mosquitto itself reading a file `ringmq passwd` wrote
//! (Debian's `mosquitto` and `mosquitto-clients`, installed by scripts/test.sh). Every client
//! run is bounded by its own `-W` and a kill by PID.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Broker};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory of this test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(common::unique_id(&format!("ringmq-auth-{name}")));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion within [`CLIENT_TIMEOUT`] (killed by PID otherwise).
fn run(command: &mut Command) -> Output {
    let child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("run {command:?} (apt-get install mosquitto-clients): {error}")
        });
    common::wait_bounded(child, &format!("{command:?}"), CLIENT_TIMEOUT)
}

fn ringmq_passwd(args: &[&str]) {
    let output = run(Command::new(env!("CARGO_BIN_EXE_ringmq")).arg("passwd").args(args));
    assert!(output.status.success(), "ringmq passwd {args:?}: {output:?}");
}

fn mosquitto_passwd(args: &[&str]) {
    let output = run(Command::new("mosquitto_passwd").args(args));
    assert!(output.status.success(), "mosquitto_passwd {args:?}: {output:?}");
}

/// `mosquitto_pub` as `user`/`password` on `port`; returns its exit code and standard error.
fn publish_as(port: u16, user: &str, password: &str, args: &[&str]) -> (i32, String) {
    let output = run(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", user, "-P", password])
        .args(args));
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn a_mosquitto_passwd_file_is_accepted_and_a_wrong_password_refused() {
    let dir = TempDir::new("mosq-file");
    let file = dir.file("passwd");
    mosquitto_passwd(&["-c", "-b", path(&file), "alice", "secret"]);
    mosquitto_passwd(&["-b", path(&file), "bob", "hunter2"]);
    let broker = Broker::start(&["--password-file", path(&file)]);
    for (user, password) in [("alice", "secret"), ("bob", "hunter2")] {
        let (code, stderr) = publish_as(broker.port(), user, password, &["-t", "a", "-m", "x"]);
        assert_eq!(code, 0, "{user}: {stderr}");
    }
    // [MQTT-3.2.2-5]: refused with 0x04, which mosquitto_pub reports and exits with.
    for (user, password) in [("alice", "Secret"), ("mallory", "secret")] {
        let (code, stderr) = publish_as(broker.port(), user, password, &["-t", "a", "-m", "x"]);
        assert_ne!(code, 0, "{user}/{password} was accepted");
        assert!(stderr.contains("bad user name or password"), "{user}: {stderr}");
    }
    let log = broker.stop();
    assert!(log.contains("2 users in the password file"), "{log}");
}

#[test]
fn a_ringmq_passwd_file_is_accepted_by_mosquitto() {
    let dir = TempDir::new("ringmq-file");
    let file = dir.file("passwd");
    ringmq_passwd(&["-c", "-b", path(&file), "carol", "pa:ss word"]);
    ringmq_passwd(&["-b", "-I", "1000", path(&file), "dave", "other"]);
    let port = free_port();
    let config = dir.file("mosquitto.conf");
    // As root, Mosquitto would drop to the `mosquitto` user, which cannot read our 0600 file.
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n\
             log_dest stderr\n",
            path(&file)
        ),
    )
    .expect("write the Mosquitto config");
    let mut mosquitto = Command::new("mosquitto")
        .args(["-c", path(&config)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto (apt-get install mosquitto)");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut results = Vec::new();
    // Wait until it listens (its first answer), then check both users and a wrong password.
    loop {
        let (code, stderr) = publish_as(port, "carol", "pa:ss word", &["-t", "a", "-m", "x"]);
        if code == 0 || !stderr.contains("Connection refused") || Instant::now() > deadline {
            results.push((code, stderr));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    results.push(publish_as(port, "dave", "other", &["-t", "a", "-m", "x"]));
    results.push(publish_as(port, "dave", "wrong", &["-t", "a", "-m", "x"]));
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    assert_eq!(results[0].0, 0, "carol: {}", results[0].1);
    assert_eq!(results[1].0, 0, "dave (1000 iterations): {}", results[1].1);
    assert_ne!(results[2].0, 0, "Mosquitto accepted a wrong password");
}

const ACL: &str = "\
user reader
topic read public/#
user writer
topic write public/#
topic write secret/#
";

#[test]
fn the_acl_denies_in_both_directions_with_mosquitto_clients() {
    let dir = TempDir::new("acl");
    let passwords = dir.file("passwd");
    let acl = dir.file("acl");
    ringmq_passwd(&["-c", "-b", path(&passwords), "reader", "r"]);
    ringmq_passwd(&["-b", path(&passwords), "writer", "w"]);
    std::fs::write(&acl, ACL).expect("write the ACL");
    let broker = Broker::start(&["--password-file", path(&passwords), "--acl-file", path(&acl)]);
    // Subscribe denied: 0x80 in SUBACK, which mosquitto_sub -d prints as "Subscribed ... 128"
    // (-E: exit once the SUBACK came).
    let output = run(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-u", "reader", "-P", "r"])
        .args(["-d", "-E", "-t", "secret/#"]));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("Subscribed (mid: 1): 128"), "{printed}");
    // A wildcard subscriber does not receive what it may not read: `#` is granted (some of it
    // is readable), the secret message published first is skipped, the public one arrives.
    let wildcard = Subscriber::start(&broker, "reader", "r", &["-t", "#", "-C", "1", "-v"]);
    let (code, stderr) =
        publish_as(broker.port(), "writer", "w", &["-t", "secret/x", "-m", "s", "-q", "1"]);
    assert_eq!(code, 0, "{stderr}");
    // Publish denied: the reader may not write; acknowledged (exit 0 at QoS 1), not delivered.
    let (code, stderr) =
        publish_as(broker.port(), "reader", "r", &["-t", "public/fake", "-m", "f", "-q", "1"]);
    assert_eq!(code, 0, "a denied publish is still acknowledged [MQTT-3.3.5-2]: {stderr}");
    let (code, stderr) =
        publish_as(broker.port(), "writer", "w", &["-t", "public/news", "-m", "n", "-q", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(wildcard.finish(), vec!["public/news n"], "only the readable message arrives");
    let log = broker.stop();
    assert!(log.contains("ACL with 3 rules for 2 users"), "{log}");
}

/// A running `mosquitto_sub -d` whose standard output is read line by line.
struct Subscriber {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Subscriber {
    /// Starts it as `user` and waits until its SUBACK arrived.
    fn start(broker: &Broker, user: &str, password: &str, args: &[&str]) -> Self {
        let port = broker.port().to_string();
        // stdbuf: a piped stdout would be block-buffered and show the SUBACK line at exit.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d", "-W", "10"])
            .args(["-u", user, "-P", password])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut subscriber = Self { child, lines, seen: Vec::new() };
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !subscriber.seen.iter().any(|line| line.contains("received SUBACK")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match subscriber.lines.recv_timeout(left) {
                Ok(line) => subscriber.seen.push(line),
                Err(error) => {
                    panic!("no SUBACK for mosquitto_sub ({error:?}): {:?}", subscriber.seen)
                }
            }
        }
        subscriber
    }

    /// Waits (bounded) for it to exit by itself (`-C n`) and returns its message lines.
    fn finish(self) -> Vec<String> {
        let debug =
            |line: &&String| line.starts_with("Client ") || line.starts_with("Subscribed (");
        self.finish_with_debug().iter().filter(|line| !debug(line)).cloned().collect()
    }

    /// Waits (bounded) for it to exit by itself and returns every line it printed.
    fn finish_with_debug(mut self) -> Vec<String> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("mosquitto_sub still running: {:?}", self.seen)
                }
            }
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGHUP reloads the password file. As in Mosquitto, a connected client whose user was
/// deleted or whose password changed is disconnected (mosquitto_sub then reconnects with its
/// old credentials and is refused 0x04); an unchanged user's connection is kept; the new
/// password works for the next CONNECT and the old one does not; a broken file changes nothing.
#[test]
fn sighup_disconnects_deleted_and_changed_users_and_keeps_the_rest() {
    let dir = TempDir::new("reload");
    let file = dir.file("passwd");
    ringmq_passwd(&["-c", "-b", path(&file), "alice", "old"]);
    ringmq_passwd(&["-b", path(&file), "bob", "b"]);
    ringmq_passwd(&["-b", path(&file), "carol", "c"]);
    let broker = Broker::start(&["--password-file", path(&file), "--workers", "2"]);
    let alice = Subscriber::start(&broker, "alice", "old", &["-t", "t"]);
    let carol = Subscriber::start(&broker, "carol", "c", &["-t", "t"]);
    // Connected before the reload, and must still receive after it.
    let bob = Subscriber::start(&broker, "bob", "b", &["-t", "t", "-C", "1"]);
    ringmq_passwd(&["-b", path(&file), "alice", "new"]);
    ringmq_passwd(&["-D", path(&file), "carol"]);
    broker.signal(libc::SIGHUP);
    for revoked in [alice, carol] {
        let printed = revoked.finish_with_debug().join("\n");
        assert!(printed.contains("received CONNACK (4)"), "not disconnected: {printed}");
    }
    let (code, stderr) = publish_as(broker.port(), "alice", "old", &["-t", "x", "-m", "x"]);
    assert_ne!(code, 0, "the old password still works after the reload");
    assert!(stderr.contains("bad user name or password"), "{stderr}");
    let (code, stderr) = publish_as(broker.port(), "alice", "new", &["-t", "t", "-m", "after"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(bob.finish(), vec!["after"], "the unchanged user's connection was kept");
    // A broken file is refused and the tables stay.
    std::fs::write(&file, "alice:not-a-hash\n").expect("break the file");
    broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stderr) = publish_as(broker.port(), "alice", "new", &["-t", "x", "-m", "x"]);
    assert_eq!(code, 0, "a broken file replaced the tables: {stderr}");
    let log = broker.stop();
    assert!(log.contains("reloaded: 2 users in the password file"), "{log}");
    assert!(log.contains("reload refused, keeping the previous configuration"), "{log}");
    assert!(log.contains("disconnected clients whose user was deleted or password changed"));
    assert_eq!(counter(&log, "credentials_revoked"), 2, "{log}");
}

/// A worker counter summed over the workers, from the log a stopped broker leaves.
fn counter(log: &str, name: &str) -> u64 {
    let key = format!(" {name}: ");
    log.lines()
        .filter_map(|line| line.split(key.as_str()).nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum()
}

/// The failed-login limit is one per source address for the whole broker: guesses whose
/// sessions live on different workers (client ids homed on each of the two) add up, so after
/// two failures even the right password is refused 0x05 on either worker. (With a count per
/// worker, each worker would have seen one failure and let the right password in.)
#[test]
fn failed_logins_are_limited_per_source_address_across_workers() {
    // The limit needs the peer's address, which the runtime learns through io_uring
    // (getsockopt SO_PEERNAME on the direct descriptor): this shows it arrives.
    let dir = TempDir::new("limit");
    let file = dir.file("passwd");
    ringmq_passwd(&["-c", "-b", path(&file), "alice", "secret"]);
    let broker = Broker::start(&[
        "--password-file",
        path(&file),
        "--auth-failures-max",
        "2",
        "--workers",
        "2",
    ]);
    let homed_on = |worker: u16, prefix: &str| {
        (0..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|id| ringmq::broker::home_worker(id.as_bytes(), 2).0 == worker)
            .expect("an id homed on each worker")
    };
    let attempt = |client_id: &str, password: &str| {
        publish_as(broker.port(), "alice", password, &["-i", client_id, "-t", "a", "-m", "x"])
    };
    for (worker, guess) in [(0, "one"), (1, "two")] {
        let (code, stderr) = attempt(&homed_on(worker, "guess"), guess);
        assert!(code != 0 && stderr.contains("bad user name or password"), "{stderr}");
    }
    for worker in [0, 1] {
        let (code, stderr) = attempt(&homed_on(worker, "right"), "secret");
        assert_ne!(code, 0, "the right password after the limit was accepted on {worker}");
        assert!(stderr.contains("not authorised"), "refused 0x05 while limited: {stderr}");
    }
    let log = broker.stop();
    assert!(!log.contains("peer address unavailable"), "{log}");
    assert_eq!(counter(&log, "connects_rate_limited"), 2, "{log}");
}

/// A CONNECT whose password is being verified off the loop when a reload changes that password
/// is checked again against the new file, so a reload cannot be outrun: the old password is
/// refused. (A hash of 50,000 PBKDF2 iterations keeps the verification of this debug build
/// running ~0.7 s, so the reload lands in the middle of it; the log proves it did.) The client
/// is the test harness's raw one: the point is the timing, which it controls.
#[test]
fn a_reload_during_a_password_verification_checks_it_again() {
    use bytes::Bytes;
    use ringmq::protocol::{Connect, ConnectReturnCode, Packet, ProtocolVersion, Utf8Bytes};
    let dir = TempDir::new("reload-race");
    let file = dir.file("passwd");
    ringmq_passwd(&["-c", "-b", "-I", "50000", path(&file), "alice", "old"]);
    let broker = Broker::start(&["--password-file", path(&file)]);
    let mut client = common::RawClient::open(broker.addr());
    client.send(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive_secs: 30,
        client_id: Utf8Bytes::from("reload-race".to_owned()),
        will: None,
        username: Some(Utf8Bytes::from("alice".to_owned())),
        password: Some(Bytes::from_static(b"old")),
    })));
    std::thread::sleep(Duration::from_millis(150));
    ringmq_passwd(&["-b", path(&file), "alice", "new"]);
    broker.signal(libc::SIGHUP);
    match client.receive() {
        Packet::Connack(connack) => {
            assert_eq!(connack.code, ConnectReturnCode::BadUsernameOrPassword, "[MQTT-3.2.2-5]")
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let log = broker.stop();
    assert!(log.contains("verified against reloaded tables: checking again"), "{log}");
}
