//! The real `ringmq` binary under many rumqttc clients at once: a thousand concurrent
//! clients each receiving its own message, and many publishers whose messages cross four
//! workers (on two cores) with each publisher's order kept. The clients are rumqttc's async
//! ones on one tokio runtime (a thousand sync clients would be a thousand threads).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{unique_id, Broker};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// The whole of each test, so a stall fails it instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// One wait for one expected packet.
const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn options(broker: &Broker, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// Polls `eventloop` until `pick` accepts an incoming packet; fails after [`WAIT`] or on a
/// connection error (the event loop is not polled again after one: it would reconnect).
async fn wait_for<T>(
    eventloop: &mut EventLoop,
    what: &str,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Err(format!("no {what} within {WAIT:?}")),
            Ok(Err(error)) => return Err(format!("connection failed waiting for {what}: {error}")),
            Ok(Ok(Event::Incoming(packet))) => {
                if let Some(found) = pick(packet) {
                    return Ok(found);
                }
            }
            Ok(Ok(Event::Outgoing(_))) => {}
        }
    }
}

/// Connects and subscribes `filter`; the client and its event loop, ready to receive.
async fn subscriber(
    options: MqttOptions,
    filter: &str,
    qos: QoS,
) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    wait_for(&mut eventloop, "CONNACK", |packet| {
        matches!(packet, Packet::ConnAck(_)).then_some(())
    })
    .await?;
    client.subscribe(filter, qos).await.map_err(|error| error.to_string())?;
    let codes = wait_for(&mut eventloop, "SUBACK", |packet| match packet {
        Packet::SubAck(suback) => Some(suback.return_codes),
        _ => None,
    })
    .await?;
    if codes != [rumqttc::SubscribeReasonCode::Success(qos)] {
        return Err(format!("SUBACK for {filter}: {codes:?}"));
    }
    Ok((client, eventloop))
}

/// A thousand clients each subscribe to their own topic; one publisher then sends one QoS 1
/// message to each topic, and every client gets exactly its own.
#[test]
fn a_thousand_concurrent_clients_each_get_their_message() {
    const CLIENTS: usize = 1000;
    let broker = Broker::start(&["--workers", "2"]);
    let prefix = unique_id("many");
    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, thousand_clients(&broker, &prefix, CLIENTS))
            .await
            .unwrap_or_else(|_| panic!("not done within {TEST_TIMEOUT:?}"));
    });
}

async fn thousand_clients(broker: &Broker, prefix: &str, clients: usize) {
    // Connect in waves of 100, so a slow debug build is not handed 1000 handshakes at once.
    let connecting = Arc::new(Semaphore::new(100));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(clients);
    let mut tasks = JoinSet::new();
    for index in 0..clients {
        let options = options(broker, &format!("{prefix}-{index}"));
        let topic = format!("{prefix}/{index}");
        let connecting = Arc::clone(&connecting);
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let permit = connecting.acquire_owned().await.map_err(|error| error.to_string())?;
            let (client, mut eventloop) = subscriber(options, &topic, QoS::AtLeastOnce).await?;
            drop(permit);
            ready.send(()).await.map_err(|error| error.to_string())?;
            let got = wait_for(&mut eventloop, "PUBLISH", |packet| match packet {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            })
            .await?;
            if got.topic != topic || got.payload[..] != *index.to_string().as_bytes() {
                return Err(format!("client {index} got {got:?}"));
            }
            client.disconnect().await.map_err(|error| error.to_string())?;
            // One more poll sends the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            Ok::<usize, String>(index)
        });
    }
    drop(ready_tx);
    for _ in 0..clients {
        if ready_rx.recv().await.is_none() {
            // A task ended early: its error is the one to report.
            let failure = tasks.join_next().await.expect("a task ended").expect("no panic");
            panic!("a client failed before subscribing: {failure:?}");
        }
    }

    let (publisher, mut publisher_loop) =
        AsyncClient::new(options(broker, &format!("{prefix}-publisher")), 64);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < clients {
            wait_for(&mut publisher_loop, "PUBACK", |packet| {
                matches!(packet, Packet::PubAck(_)).then_some(())
            })
            .await?;
            acked += 1;
        }
        Ok::<usize, String>(acked)
    });
    for index in 0..clients {
        publisher
            .publish(format!("{prefix}/{index}"), QoS::AtLeastOnce, false, index.to_string())
            .await
            .expect("queue PUBLISH");
    }
    // [MQTT-4.3.2-2] every QoS 1 publish is acknowledged.
    assert_eq!(acks.await.expect("no panic"), Ok(clients));
    let mut received = vec![false; clients];
    while let Some(result) = tasks.join_next().await {
        let index = result.expect("no panic").unwrap_or_else(|error| panic!("{error}"));
        received[index] = true;
    }
    assert!(received.iter().all(|&got| got), "every client got its message");
}

/// Many publishers and subscribers on a broker with four workers on two cores: client ids
/// hash to different home workers, so publishes cross the mesh. Every subscriber must get
/// every message once, and each publisher's messages in the order they were sent
/// [MQTT-4.6.0-5] [MQTT-4.6.0-6].
#[test]
fn publishes_crossing_four_workers_keep_each_publishers_order() {
    const PUBLISHERS: usize = 16;
    const SUBSCRIBERS: usize = 4;
    const MESSAGES: usize = 500;
    // Each subscriber may have every publisher's whole window (rumqttc: 100) queued at once;
    // the default queue bound (1000) would rightly disconnect it as a slow consumer, which is
    // not what this test is about.
    let broker = Broker::start(&["--workers", "4", "--max-queued-messages", "10000"]);
    let prefix = unique_id("order");
    runtime().block_on(async {
        tokio::time::timeout(
            TEST_TIMEOUT,
            crossing_workers(&broker, &prefix, PUBLISHERS, SUBSCRIBERS, MESSAGES),
        )
        .await
        .unwrap_or_else(|_| panic!("not done within {TEST_TIMEOUT:?}"));
    });
    // The point was to cross workers: the workers' final counters must show connections
    // handed to their home worker and messages pushed through the mesh.
    let log = broker.stop();
    let handoffs = sum_counter(&log, "handoffs_in: ");
    let pushed = sum_counter(&log, "pushed: ");
    assert!(handoffs > 0 && pushed > 0, "no handoff ({handoffs}) or mesh push ({pushed}):\n{log}");
}

/// The sum of `name` over the "worker stopped" lines of the broker's log.
fn sum_counter(log: &str, name: &str) -> u64 {
    let stopped: Vec<&str> = log.lines().filter(|line| line.contains("worker stopped")).collect();
    assert_eq!(stopped.len(), 4, "one 'worker stopped' line per worker:\n{log}");
    stopped
        .iter()
        .map(|line| {
            let at =
                line.find(name).unwrap_or_else(|| panic!("no {name:?} in {line}")) + name.len();
            let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().unwrap_or_else(|error| panic!("{name:?} in {line}: {error}"))
        })
        .sum()
}

async fn crossing_workers(
    broker: &Broker,
    prefix: &str,
    publishers: usize,
    subscribers: usize,
    messages: usize,
) {
    let mut receiving = JoinSet::new();
    for index in 0..subscribers {
        let options = options(broker, &format!("{prefix}-sub-{index}"));
        let (client, eventloop) = subscriber(options, &format!("{prefix}/#"), QoS::AtLeastOnce)
            .await
            .unwrap_or_else(|error| panic!("subscriber {index}: {error}"));
        let expected = publishers * messages;
        receiving.spawn(check_order(client, eventloop, index, expected));
    }
    let mut publishing = JoinSet::new();
    for index in 0..publishers {
        let (client, eventloop) =
            AsyncClient::new(options(broker, &format!("{prefix}-pub-{index}")), 64);
        let topic = format!("{prefix}/{index}");
        publishing.spawn(publish_sequence(client, eventloop, topic, messages));
    }
    while let Some(result) = publishing.join_next().await {
        result.expect("no panic").unwrap_or_else(|error| panic!("publisher: {error}"));
    }
    while let Some(result) = receiving.join_next().await {
        result.expect("no panic").unwrap_or_else(|error| panic!("subscriber: {error}"));
    }
}

/// Publishes `0..messages` to `topic` at QoS 1 and waits for every PUBACK.
async fn publish_sequence(
    client: AsyncClient,
    mut eventloop: EventLoop,
    topic: String,
    messages: usize,
) -> Result<(), String> {
    wait_for(&mut eventloop, "CONNACK", |packet| {
        matches!(packet, Packet::ConnAck(_)).then_some(())
    })
    .await?;
    let sender = tokio::spawn(async move {
        for sequence in 0..messages {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, sequence.to_string())
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok::<AsyncClient, String>(client)
    });
    for _ in 0..messages {
        wait_for(&mut eventloop, "PUBACK", |packet| {
            matches!(packet, Packet::PubAck(_)).then_some(())
        })
        .await?;
    }
    let client = sender.await.map_err(|error| error.to_string())??;
    client.disconnect().await.map_err(|error| error.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

/// Receives `expected` messages and checks each topic's payloads count up from 0 by one.
async fn check_order(
    client: AsyncClient,
    mut eventloop: EventLoop,
    index: usize,
    expected: usize,
) -> Result<(), String> {
    let mut next_by_topic: HashMap<String, usize> = HashMap::new();
    for _ in 0..expected {
        let publish = wait_for(&mut eventloop, "PUBLISH", |packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .await
        .map_err(|error| {
            format!(
                "subscriber {index} after {} messages: {error}",
                next_by_topic.values().sum::<usize>()
            )
        })?;
        let sequence: usize = String::from_utf8_lossy(&publish.payload)
            .parse()
            .map_err(|error| format!("payload {:?}: {error}", publish.payload))?;
        let next = next_by_topic.entry(publish.topic.clone()).or_insert(0);
        if sequence != *next {
            return Err(format!(
                "subscriber {index}: {} sent {} but {sequence} came next",
                publish.topic, *next
            ));
        }
        *next += 1;
    }
    client.disconnect().await.map_err(|error| error.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}
