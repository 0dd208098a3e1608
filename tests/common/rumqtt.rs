//! rumqttc's synchronous client with bounded waits: [`Session`] drives one `Connection` from
//! the test's thread, keeps the publishes that arrive while it waits for something else, and
//! never polls again after the connection failed (rumqttc would silently reconnect).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnAck, ConnectReturnCode, Connection, ConnectionError, Event, LastWill, MqttOptions,
    Outgoing, Packet, Publish, QoS, RecvTimeoutError, StateError, SubscribeReasonCode,
};

use super::Broker;

/// How long any single wait on the broker may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Options for `client_id` at `broker`: keepalive 30 s, clean session.
pub fn options(broker: &Broker, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Options with a will on `topic`.
pub fn options_with_will(
    broker: &Broker,
    client_id: &str,
    topic: &str,
    payload: &str,
) -> MqttOptions {
    let mut options = options(broker, client_id);
    options.set_last_will(LastWill::new(
        topic,
        payload.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    options
}

/// One rumqttc connection, connected.
pub struct Session {
    pub client: Client,
    connection: Connection,
    received: VecDeque<Publish>,
    pub connack: ConnAck,
    failed: bool,
}

impl Session {
    /// Connects with `options` and waits for CONNACK; panics unless it is accepted.
    pub fn connect(options: MqttOptions) -> Self {
        let (client, connection) = Client::new(options, 256);
        let mut session = Self {
            client,
            connection,
            received: VecDeque::new(),
            connack: ConnAck::new(ConnectReturnCode::Success, false),
            failed: false,
        };
        session.connack = session.wait_for("CONNACK", |packet| match packet {
            Packet::ConnAck(connack) => Some(connack.clone()),
            _ => None,
        });
        assert_eq!(session.connack.code, ConnectReturnCode::Success, "CONNACK refused");
        session
    }

    /// One event within `timeout`: `Ok(None)` when none came, `Err` when the connection failed.
    fn poll(&mut self, timeout: Duration) -> Result<Option<Event>, Box<ConnectionError>> {
        assert!(!self.failed, "polled a failed connection (rumqttc would reconnect)");
        match self.connection.recv_timeout(timeout) {
            Ok(Ok(event)) => Ok(Some(event)),
            Ok(Err(error)) => {
                self.failed = true;
                Err(Box::new(error))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => panic!("rumqttc's request channel closed"),
        }
    }

    /// Polls until `pick` accepts an incoming packet (within [`WAIT`]); publishes seen on
    /// the way are kept for [`Self::next_publish`].
    pub fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within {WAIT:?}");
            match self.poll(left) {
                Ok(Some(Event::Incoming(packet))) => {
                    if let Some(found) = pick(&packet) {
                        return found;
                    }
                    if let Packet::Publish(publish) = packet {
                        self.received.push_back(publish);
                    }
                }
                Ok(Some(Event::Outgoing(_)) | None) => {}
                Err(error) => panic!("connection failed while waiting for {what}: {error}"),
            }
        }
    }

    /// Subscribes and checks the SUBACK grants `qos` ([MQTT-3.8.4-1], [MQTT-3.9.3-1]).
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).expect("queue SUBSCRIBE");
        let codes = self.wait_for("SUBACK", |packet| match packet {
            Packet::SubAck(suback) => Some(suback.return_codes.clone()),
            _ => None,
        });
        assert_eq!(codes, vec![SubscribeReasonCode::Success(qos)], "SUBACK for {filter}");
    }

    /// Publishes and, for QoS 1 and 2, waits for the broker's PUBACK or PUBCOMP.
    pub fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload).expect("queue PUBLISH");
        match qos {
            // Sent once the event loop writes it.
            QoS::AtMostOnce => {
                self.wait_outgoing(|outgoing| matches!(outgoing, Outgoing::Publish(_)))
            }
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |packet| matches!(packet, Packet::PubAck(_)).then_some(()))
            }
            QoS::ExactlyOnce => self
                .wait_for("PUBCOMP", |packet| matches!(packet, Packet::PubComp(_)).then_some(())),
        }
    }

    fn wait_outgoing(&mut self, pick: impl Fn(&Outgoing) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nothing sent within {WAIT:?}");
            match self.poll(left) {
                Ok(Some(Event::Outgoing(outgoing))) if pick(&outgoing) => return,
                Ok(Some(Event::Incoming(Packet::Publish(publish)))) => {
                    self.received.push_back(publish)
                }
                Ok(_) => {}
                Err(error) => panic!("connection failed while sending: {error}"),
            }
        }
    }

    /// The next publish from the broker within [`WAIT`].
    pub fn next_publish(&mut self) -> Publish {
        if let Some(publish) = self.received.pop_front() {
            return publish;
        }
        self.wait_for("PUBLISH", |packet| match packet {
            Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
    }

    /// Checks that no publish arrives within `quiet`.
    pub fn expect_no_publish(&mut self, quiet: Duration) {
        if let Some(publish) = self.received.pop_front() {
            panic!("unexpected {publish:?}");
        }
        let deadline = Instant::now() + quiet;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.poll(left) {
                Ok(Some(Event::Incoming(Packet::Publish(publish)))) => {
                    panic!("unexpected {publish:?}")
                }
                Ok(_) => {}
                Err(error) => panic!("connection failed: {error}"),
            }
        }
    }

    /// Waits until the broker closes this connection, and returns the error rumqttc saw;
    /// panics if the connection failed for another reason (a timeout, a refused packet).
    pub fn wait_closed(&mut self, timeout: Duration) -> Box<ConnectionError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the broker did not close the connection within {timeout:?}");
            match self.poll(left) {
                Ok(Some(Event::Incoming(Packet::Publish(publish)))) => {
                    self.received.push_back(publish)
                }
                Ok(_) => {}
                Err(error) if closed_by_peer(&error) => return error,
                Err(error) => panic!("the connection failed, but not by a close: {error}"),
            }
        }
    }

    /// Sends DISCONNECT and waits until it has left ([MQTT-3.14.4-3]: the will is discarded).
    pub fn disconnect(mut self) {
        self.client.disconnect().expect("queue DISCONNECT");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "DISCONNECT not sent within {WAIT:?}");
            match self.poll(left) {
                Ok(Some(Event::Outgoing(Outgoing::Disconnect))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Whether rumqttc's error means the peer closed the connection (EOF or a reset: the broker
/// closes with unread input pending, which the kernel turns into a reset).
fn closed_by_peer(error: &ConnectionError) -> bool {
    let io = match error {
        ConnectionError::Io(io) => io,
        ConnectionError::MqttState(StateError::ConnectionAborted) => return true,
        ConnectionError::MqttState(StateError::Io(io)) => io,
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => io,
        _ => return false,
    };
    matches!(
        io.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
    )
}
