//! The operations side against the real binary: `/metrics` scraped and parsed as the
//! Prometheus text format, its values moving as clients connect and publish; the admin API
//! (token, clients, subscriptions, retained read and delete, kick) driven with rumqttc
//! clients; `--check-config` on good and bad configurations.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::rumqtt::{self, Session};
use common::{free_port, unique_id, Broker};
use ringmq::protocol::Packet;
use rumqttc::QoS;
use serde_json::Value;

/// How long a test waits for an exported value to show (the export period is 200 ms).
const SETTLE: Duration = Duration::from_secs(5);

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response to its end");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

fn json(addr: SocketAddr, method: &str, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(addr, method, path, Some(token));
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// GETs `path` until its 200 answer satisfies `check`, or fails after [`SETTLE`] with the last.
fn json_until(addr: SocketAddr, path: &str, token: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, value) = json(addr, "GET", path, token);
        if status == 200 && check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{path}: not as expected within {SETTLE:?}: {value}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scrape: (name, labels without `worker`) -> value summed over the workers.
type Scrape = HashMap<(String, String), f64>;

/// Parses the text exposition format strictly enough to catch a malformed line: every
/// sample's family has a TYPE line before it, and every value parses.
fn parse_exposition(text: &str) -> Scrape {
    let mut typed = HashMap::new();
    let mut samples = Scrape::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "two TYPEs: {line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(typed.contains_key(name), "sample before its TYPE: {line}");
        let rest: Vec<&str> = labels
            .split(',')
            .filter(|label| !label.is_empty() && !label.starts_with("worker="))
            .collect();
        for label in &rest {
            let (_, quoted) = label.split_once('=').expect("label=value");
            assert!(quoted.starts_with('"') && quoted.ends_with('"'), "{line}");
        }
        *samples.entry((name.to_owned(), rest.join(","))).or_default() += value;
    }
    samples
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

fn value(scrape: &Scrape, name: &str, labels: &str) -> f64 {
    *scrape
        .get(&(name.to_owned(), labels.to_owned()))
        .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
}

/// Scrapes until `check` holds, or fails with the last scrape's figures.
fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + SETTLE;
    loop {
        let scraped = scrape(addr);
        if check(&scraped) {
            return scraped;
        }
        assert!(Instant::now() < deadline, "{what} not seen within {SETTLE:?}: {scraped:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker with the HTTP listener on a port of its own. The port comes from the same
/// once-only source as the brokers' MQTT ports (a port of another test's broker, or one taken
/// meanwhile by another process, would fail the start or answer as someone else), and is
/// picked anew if a start attempt fails.
fn start(extra: &[&str]) -> (Broker, SocketAddr) {
    let mut http_port = 0;
    let broker = Broker::start_with(|| {
        http_port = free_port();
        let mut flags = vec!["--workers".to_owned(), "2".to_owned()];
        flags.extend(["--http-port".to_owned(), http_port.to_string()]);
        flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
        flags
    });
    (broker, SocketAddr::from(([127, 0, 0, 1], http_port)))
}

#[test]
fn metrics_move_when_clients_connect_and_publish() {
    let (broker, addr) = start(&[]);
    // The start-up readiness probe connected and left a client; its close reaches the
    // exported figures within an export interval, so wait for it rather than race it.
    let before = scrape_until(addr, "the readiness probe's client gone", |s| {
        value(s, "ringmq_clients_connected", "") == 0.0
    });
    assert_eq!(value(&before, "ringmq_workers", ""), 2.0);
    assert!(value(&before, "ringmq_process_resident_memory_bytes", "") > 1e6, "RSS in bytes");
    let accepted_before = value(&before, "ringmq_connections_accepted_total", "");

    let mut subscriber = Session::connect(rumqtt::options(&broker, &unique_id("sub")));
    subscriber.subscribe("m/#", QoS::AtLeastOnce);
    let mut publisher = Session::connect(rumqtt::options(&broker, &unique_id("pub")));
    for _ in 0..5 {
        publisher.publish("m/zero", QoS::AtMostOnce, false, "x");
    }
    for _ in 0..3 {
        publisher.publish("m/one", QoS::AtLeastOnce, false, "y");
    }
    for _ in 0..8 {
        subscriber.next_publish();
    }
    // Each worker exports on its own schedule (the accepting worker may not be the session's
    // home), so wait for every figure at once.
    let after = scrape_until(addr, "2 clients and 8 messages", |s| {
        value(s, "ringmq_clients_connected", "") == 2.0
            && value(s, "ringmq_connections_accepted_total", "") >= accepted_before + 2.0
            && value(s, "ringmq_messages_received_total", "qos=\"1\"") == 3.0
            && value(s, "ringmq_messages_sent_total", "qos=\"1\"") == 3.0
    });
    assert_eq!(value(&after, "ringmq_messages_received_total", "qos=\"0\""), 5.0);
    assert_eq!(value(&after, "ringmq_messages_sent_total", "qos=\"0\""), 5.0);
    assert_eq!(value(&after, "ringmq_subscriptions", ""), 1.0);
    assert!(value(&after, "ringmq_bytes_received_total", "") > 0.0);
    assert!(value(&after, "ringmq_loop_turns_total", "") > 0.0);
    assert!(value(&after, "ringmq_loop_busy_seconds_total", "") > 0.0);
    assert_eq!(value(&after, "ringmq_ring_cq_overflow_turns_total", ""), 0.0);
    // The sampler takes one sample a second; the connects above are within its window.
    scrape_until(addr, "connects per second", |s| value(s, "ringmq_connects_per_second", "") > 0.0);

    publisher.disconnect();
    scrape_until(addr, "the disconnect counted", |s| {
        value(s, "ringmq_closes_total", "reason=\"client_disconnect\"") >= 1.0
            && value(s, "ringmq_clients_connected", "") == 1.0
    });
    drop(subscriber);
    broker.stop();
}

#[test]
fn admin_api_lists_kicks_and_deletes() {
    let token = "a-test-token-of-some-length";
    let (broker, addr) = start(&["--admin-token", token]);
    assert_eq!(http(addr, "GET", "/api/v1/stats", None).0, 401);
    assert_eq!(http(addr, "GET", "/api/v1/stats", Some("wrong")).0, 401);

    let prefix = unique_id("adm");
    let (watcher_id, victim_id) = (format!("{prefix}-watcher"), format!("{prefix}-victim"));
    let mut watcher = Session::connect(rumqtt::options(&broker, &watcher_id));
    watcher.subscribe("will/#", QoS::AtLeastOnce);
    let options = rumqtt::options_with_will(&broker, &victim_id, "will/victim", "gone");
    let mut victim = Session::connect(options);
    victim.publish("keep/a", QoS::AtLeastOnce, true, "first");
    victim.publish("keep/b", QoS::AtLeastOnce, true, vec![0xff, 0x00]);

    let (status, clients) = json(addr, "GET", &format!("/api/v1/clients?search={prefix}"), token);
    assert_eq!(status, 200, "{clients}");
    assert_eq!(clients["matched"], 2, "{clients}");
    let listed = clients["clients"].as_array().expect("a list");
    assert_eq!(listed[0]["client_id"], victim_id.as_str(), "sorted by client id: {clients}");
    assert_eq!(listed[1]["client_id"], watcher_id.as_str());
    for client in listed {
        assert_eq!(client["connected"], true);
        assert_eq!(client["keepalive_secs"], 30);
        assert!(
            client["connected_since_unix_millis"].as_u64().expect("a time") > 1_600_000_000_000
        );
        assert!(client["worker"].as_u64().expect("a worker") < 2);
        // The test's clients connect from 127.0.0.1 (the kernel tells the worker, 6.7+).
        let address = client["address"].as_str().expect("an address");
        assert!(address.starts_with("127.0.0.1:"), "{address}");
    }
    assert_eq!(listed[1]["subscriptions"], 1);
    let (_, one) = json(addr, "GET", &format!("/api/v1/clients?search={prefix}&limit=1"), token);
    assert_eq!(
        (one["matched"].as_u64(), one["clients"].as_array().map(Vec::len)),
        (Some(2), Some(1))
    );

    let (_, subscriptions) =
        json(addr, "GET", &format!("/api/v1/subscriptions?search={prefix}"), token);
    assert_eq!(subscriptions["subscriptions"][0]["filter"], "will/#", "{subscriptions}");
    assert_eq!(subscriptions["subscriptions"][0]["qos"], 1);

    // Retained reads are answered by worker 0's replica, which a topic homed on worker 1
    // reaches through the mesh after its PUBACK: wait for it (bounded), as for the delete.
    let retained = json_until(addr, "/api/v1/retained?topic=keep/%23", token, |retained| {
        retained["matched"] == 2
    });
    let by_topic = |topic: &str| {
        retained["retained"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|m| m["topic"] == topic)
            .cloned()
    };
    assert_eq!(by_topic("keep/a").expect("keep/a")["payload"], "first");
    let binary = by_topic("keep/b").expect("keep/b");
    assert_eq!(
        (binary["payload"].clone(), binary["payload_base64"].clone()),
        (Value::Null, "/wA=".into())
    );

    assert_eq!(json(addr, "DELETE", "/api/v1/retained?topic=keep/a", token).0, 200);
    let deadline = Instant::now() + SETTLE;
    while json(addr, "GET", "/api/v1/retained?topic=keep/%23", token).1["matched"] != 1 {
        assert!(Instant::now() < deadline, "the delete did not reach worker 0's replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(json(addr, "DELETE", "/api/v1/retained?topic=no/such", token).0, 404);
    assert_eq!(json(addr, "DELETE", "/api/v1/retained?topic=bad/%23", token).0, 400);

    let (status, kicked) = json(addr, "POST", &format!("/api/v1/clients/{victim_id}/kick"), token);
    assert_eq!((status, kicked["kicked"].clone()), (200, Value::Bool(true)));
    victim.wait_closed(SETTLE);
    // A kick is not a DISCONNECT: the will goes out.
    let will = watcher.next_publish();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("will/victim", &b"gone"[..]));
    assert_eq!(json(addr, "POST", "/api/v1/clients/nobody-here/kick", token).0, 404);
    scrape_until(addr, "the kick counted", |s| {
        value(s, "ringmq_closes_total", "reason=\"kicked\"") == 1.0
    });

    // The stats are the workers' exported figures (every 200 ms): wait for the publishes.
    let stats = json_until(addr, "/api/v1/stats", token, |stats| {
        stats["totals"]["messages_received"].as_u64() >= Some(2)
    });
    assert_eq!(stats["workers"].as_array().map(Vec::len), Some(2));
    let (_, history) = json(addr, "GET", "/api/v1/stats/history", token);
    assert!(!history["samples"].as_array().expect("samples").is_empty());
    assert_eq!(http(addr, "GET", "/api/v1/nothing", Some(token)).0, 404);
    drop(watcher);
    broker.stop();
}

#[test]
fn without_a_token_the_admin_api_is_off_but_metrics_and_the_page_are_served() {
    let (broker, addr) = start(&[]);
    assert_eq!(http(addr, "GET", "/api/v1/stats", Some("anything")).0, 403);
    assert_eq!(http(addr, "GET", "/metrics", None).0, 200);
    let (status, page) = http(addr, "GET", "/dashboard", None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>ringmq dashboard</title>"));
    assert_eq!(http(addr, "GET", "/nowhere", None).0, 404);
    broker.stop();
}

fn check_config(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("--check-config")
        .args(args)
        .output()
        .expect("run ringmq --check-config");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().expect("an exit code"), text)
}

#[test]
fn check_config_exits_0_when_valid_and_1_with_every_problem() {
    let (code, text) = check_config(&["--workers", "2"]);
    assert_eq!((code, text.trim()), (0, "configuration ok"));
    let (code, text) = check_config(&["--workers", "0", "--ring-entries", "1000"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("workers (--workers): must be 1..=128"), "{text}");
    assert!(text.contains("ring_entries (--ring-entries): must be a power of two"), "{text}");
    let (code, text) = check_config(&["--admin-token-file", "/nonexistent/token"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot read admin_token_file /nonexistent/token"), "{text}");
    let (code, text) = check_config(&["-c", "/nonexistent/ringmq.toml"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot read config file /nonexistent/ringmq.toml"), "{text}");
}

#[test]
fn debug_logs_say_when_a_connection_opens_and_closes_and_why() {
    let broker = Broker::start(&["--workers", "1", "--log-level", "debug"]);
    let mut client = broker.raw_client(&unique_id("logged"));
    client.send(&Packet::Disconnect);
    assert!(client.wait_closed(SETTLE).is_some(), "the broker closes after DISCONNECT");
    let log = broker.stop();
    let closing =
        log.lines().find(|line| line.contains("closing")).unwrap_or_else(|| panic!("{log}"));
    assert!(closing.contains("DEBUG") && closing.contains("client sent DISCONNECT"), "{closing}");
    assert!(log.lines().any(|line| line.contains("DEBUG") && line.contains("connection opened")));
    assert!(log.lines().any(|line| line.contains("DEBUG") && line.contains("connection closed")));
}

#[test]
fn an_http_port_in_use_stops_the_start_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port to occupy");
    let http_port = taken.local_addr().expect("its address").port().to_string();
    let mqtt_port = free_port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--bind", "127.0.0.1", "--port", &mqtt_port, "--workers", "1"])
        .args(["--ring-entries", "256", "--recv-buffers", "64", "--http-port", &http_port])
        .output()
        .expect("run ringmq");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("binding the HTTP listener on 127.0.0.1:{http_port}")), "{log}");
}
