//! The checker: what MQTT 3.1.1 promises, stated over what the simulated clients saw.
//!
//! The model never looks inside a broker. It hears, from the clients, every PUBLISH sent and
//! acknowledged, every SUBSCRIBE / SUBACK / UNSUBSCRIBE, every session start and end, and every
//! message handed to a subscriber's application; from that it asserts
//! - integrity: a delivered message was published, to a matching topic, at no higher QoS, to a
//!   session that had asked for a matching filter;
//! - QoS 2 exactly once: a message delivered at QoS 2 reaches the application once per
//!   publication [MQTT-4.3.3-2] (a broker takes a PUBLISH that reuses a packet id it has
//!   answered with PUBCOMP as a new publication; the runtime tells the model which PUBLISHes
//!   were: `runtime/receipts.rs`); a QoS 0 publish is never delivered twice;
//! - order: per publisher and topic, first deliveries at one QoS arrive in the order the
//!   broker received the PUBLISHes from the publisher [MQTT-4.6.0-6] (the runtime reports each
//!   one it feeds: a client that writes on a connection it then gives up, and again on a new
//!   one, can have its PUBLISHes received out of publish order; messages the publisher
//!   retransmitted are left out: the retransmission is a later PUBLISH);
//! - no loss (checked at the end): a message acknowledged to its publisher (PUBACK or PUBREC)
//!   reaches every subscriber whose matching subscription (granted QoS ≥ 1) held from before the
//!   publish was sent until after its acknowledgement arrived, if the subscriber's session is
//!   persistent or still alive at the end;
//! - retained messages (when the run publishes any): a RETAIN=1 delivery is a retained
//!   publish to that topic, never older than one acknowledged before the subscriber's
//!   SUBSCRIBE [MQTT-3.3.1-6] (a retained PUBLISH is acknowledged only once every worker's
//!   replica holds it), and, with generous bounds, a subscription held to the end got the
//!   topic's retained message if one was acknowledged before its SUBSCRIBE was sent.
//!
//! - subscriptions: the filters each persistent session holds at the end are those the
//!   SUBSCRIBEs and UNSUBSCRIBEs its brokers processed leave, in the order they processed them
//!   (`requests.rs`: a request from a connection the client gave up can be processed after
//!   later ones), and every SUBACK matches the grant decision taken then.
//!
//! A subscription is expected to deliver (the no-loss check) from its SUBACK until the client
//! sends another request for the filter or a broker processes one, whichever comes first.
//!
//! Time here is a counter of model events, so "before" is exact: the simulation is one thread.

mod requests;

use std::collections::{BTreeMap, BTreeSet};

use ringmq::protocol::QoS;

use requests::{Processed, Request};

/// An application message: who published it, to which topic (an index into the universe), and
/// the publisher's sequence number for that topic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageKey {
    pub publisher: u32,
    pub topic: u16,
    pub seq: u32,
}

/// The payload prefix carrying a message's key; the rest of the payload is filler.
pub fn encode_payload(key: MessageKey, qos: QoS, filler_bytes: usize) -> Vec<u8> {
    let mut payload =
        format!("m {} {} {} {}|", key.publisher, key.topic, key.seq, qos.as_u8()).into_bytes();
    payload.resize(payload.len() + filler_bytes, b'.');
    payload
}

pub fn decode_payload(payload: &[u8]) -> Option<(MessageKey, QoS)> {
    let end = payload.iter().position(|&b| b == b'|')?;
    let text = std::str::from_utf8(&payload[..end]).ok()?;
    let mut fields = text.split(' ');
    if fields.next()? != "m" {
        return None;
    }
    let publisher = fields.next()?.parse().ok()?;
    let topic = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let qos = QoS::from_u8(fields.next()?.parse().ok()?)?;
    Some((MessageKey { publisher, topic, seq }, qos))
}

/// The topics and filters a run uses, with which filter matches which topic, decided by the
/// model's own matcher (a second path beside the broker's index).
#[derive(Clone, Debug)]
pub struct Universe {
    /// Topics; the first `publish_topics` are published to, the rest carry only wills.
    pub topics: Vec<String>,
    pub publish_topics: usize,
    pub filters: Vec<String>,
    /// `matching[topic]`: the filters that match it.
    pub matching: Vec<Vec<u16>>,
}

impl Universe {
    pub fn new(topics: Vec<String>, publish_topics: usize, filters: Vec<String>) -> Self {
        assert!(publish_topics <= topics.len());
        let matching = topics
            .iter()
            .map(|topic| {
                (0..filters.len() as u16)
                    .filter(|&f| filter_matches(&filters[f as usize], topic))
                    .collect()
            })
            .collect();
        Self { topics, publish_topics, filters, matching }
    }

    pub fn matches(&self, filter: u16, topic: u16) -> bool {
        self.matching[topic as usize].contains(&filter)
    }

    pub fn topic_index(&self, topic: &str) -> Option<u16> {
        self.topics.iter().position(|t| t == topic).map(|i| i as u16)
    }
}

/// MQTT topic matching [MQTT-4.7.1], written independently of `ringmq::protocol`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false; // [MQTT-4.7.2-1]
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

const OPEN: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Interval {
    filter: u16,
    granted: QoS,
    from: u64,
    until: u64,
}

#[derive(Clone, Debug)]
struct Published {
    qos: QoS,
    sent_at: u64,
    acked_at: Option<u64>,
    retransmitted: bool,
    /// A will: armed at CONNECT, published when its connection ends (not by DISCONNECT).
    will: WillState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WillState {
    NotAWill,
    /// In a CONNECT; may be published by any end of its connection the model did not see.
    Armed,
    Published,
    /// Its connection ended with DISCONNECT: it must never be delivered [MQTT-3.1.2-10].
    Discarded,
}

#[derive(Clone, Debug, Default)]
struct Subscriber {
    persistent: bool,
    intervals: Vec<Interval>,
    /// Open interval per filter.
    open: BTreeMap<u16, usize>,
    /// Filters asked for in the current session (any SUBSCRIBE sent): what may be delivered.
    asked: BTreeSet<u16>,
    /// Per filter, the ticket of the latest SUBSCRIBE or UNSUBSCRIBE sent: an answer to an
    /// older request does not decide the filter's state (the later request, on the same
    /// connection, is processed after it).
    latest_request: BTreeMap<u16, u64>,
    /// The requests as the brokers processed them: what the broker's session holds.
    processed: Processed,
    /// Every key the application got, across sessions.
    seen: BTreeSet<MessageKey>,
    /// Per key, deliveries at QoS 2 across the whole run (at most one per publication).
    seen_qos2: BTreeMap<MessageKey, u32>,
    /// Keys first delivered in the current session, for the order check.
    seen_in_session: BTreeSet<MessageKey>,
    /// Per (publisher, topic, delivered QoS), the receipt rank and sequence of the last
    /// first-delivered message, this session.
    last_seq: BTreeMap<(u32, u16, QoS), (u64, u32)>,
    /// Per filter, when its first SUBSCRIBE of this session was sent.
    first_subscribe: BTreeMap<u16, u64>,
    /// Per topic, when a retained message (RETAIN=1) last reached the application, this
    /// session.
    retained_got: BTreeMap<u16, u64>,
}

/// Counts for the run's report.
#[derive(Clone, Debug, Default)]
pub struct ModelStats {
    pub published: [u64; 3],
    pub acknowledged: u64,
    pub deliveries: u64,
    pub duplicates_qos1: u64,
    pub expected_checked: u64,
    pub wills_armed: u64,
    pub wills_published: u64,
    pub wills_discarded: u64,
    pub retained_published: u64,
    pub retained_deliveries: u64,
    pub retained_expected: u64,
    /// SUBSCRIBEs / UNSUBSCRIBEs (per filter) a broker processed after a later request for the
    /// same filter had been sent (they came on a connection the client had given up).
    pub requests_processed_late: u64,
}

/// A message the model expected a subscriber to get and it did not.
#[derive(Clone, Debug)]
pub struct Missing {
    pub subscriber: usize,
    pub key: MessageKey,
    pub qos: QoS,
    pub cause: Cause,
}

/// Why an expected message is missing, as far as the workers' message flow tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Nothing explains it: a broker bug.
    Unexplained,
    /// The message never reached the subscriber's worker, whose interest the publisher's
    /// worker had not yet heard of when it routed it (SIM_FINDINGS.md #3). A bug: a SUBACK
    /// must wait until every worker knows the interest.
    InterestWindow,
    /// The message reached the subscriber's worker only after the subscription was gone
    /// (acknowledged to the publisher while still in transit; SIM_FINDINGS.md #5). Accepted
    /// by the lead: not a loss.
    TransitWindow,
}

#[derive(Debug)]
pub struct Model {
    pub universe: Universe,
    clock: u64,
    published: BTreeMap<MessageKey, Published>,
    subscribers: Vec<Subscriber>,
    /// When each message first reached each worker (its publisher's by routing, others by a
    /// `RemoteMsg::Publish`).
    arrivals: BTreeMap<(MessageKey, u16), u64>,
    /// Per topic, its retained publishes in the order they were sent.
    retained: BTreeMap<u16, Vec<MessageKey>>,
    /// Per QoS 2 message, how many times a broker received it as a new publication.
    publications: BTreeMap<MessageKey, u32>,
    /// Per message, when a broker first received a PUBLISH of it (a rank: the order check's
    /// order).
    received: BTreeMap<MessageKey, u64>,
    /// The brokers' `subscriptions_per_session_max`, for the grant decision.
    subscriptions_max: usize,
    pub violations: Vec<String>,
    pub stats: ModelStats,
}

impl Model {
    pub fn new(universe: Universe, persistent: &[bool]) -> Self {
        let subscribers =
            persistent.iter().map(|&p| Subscriber { persistent: p, ..Subscriber::default() });
        Self {
            universe,
            clock: 0,
            published: BTreeMap::new(),
            subscribers: subscribers.collect(),
            arrivals: BTreeMap::new(),
            retained: BTreeMap::new(),
            publications: BTreeMap::new(),
            received: BTreeMap::new(),
            subscriptions_max: usize::MAX,
            violations: Vec::new(),
            stats: ModelStats::default(),
        }
    }

    /// The brokers refuse a new filter (0x80) once a session holds `max`.
    pub fn set_subscriptions_max(&mut self, max: usize) {
        self.subscriptions_max = max;
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn violation(&mut self, text: String) {
        if self.violations.len() < 100 {
            self.violations.push(text);
        }
    }

    /// The publisher wrote a PUBLISH (first transmission) of `key` at `qos`.
    pub fn publish_sent(&mut self, key: MessageKey, qos: QoS) {
        let at = self.tick();
        let will = WillState::NotAWill;
        let record = Published { qos, sent_at: at, acked_at: None, retransmitted: false, will };
        let previous = self.published.insert(key, record);
        assert!(previous.is_none(), "the driver published {key:?} twice");
        self.stats.published[qos.as_u8() as usize] += 1;
    }

    /// A CONNECT carrying the will `key` was written. Wills are left out of the order check:
    /// a client's connections need not end in the order they began.
    pub fn will_armed(&mut self, key: MessageKey, qos: QoS) {
        let at = self.tick();
        let will = WillState::Armed;
        let record = Published { qos, sent_at: at, acked_at: None, retransmitted: true, will };
        let previous = self.published.insert(key, record);
        assert!(previous.is_none(), "the driver armed will {key:?} twice");
        self.stats.wills_armed += 1;
    }

    /// The will `key` was published by the broker at some point since model time `since` (the
    /// start of the loop turn in which its connection ended): from then it is expected like an
    /// acknowledged publish.
    pub fn will_published(&mut self, key: MessageKey, since: u64) {
        let at = self.tick();
        let record = self.published.get_mut(&key).expect("published wills were armed");
        assert_eq!(record.will, WillState::Armed, "will {key:?} ended twice");
        record.will = WillState::Published;
        record.sent_at = since;
        record.acked_at = Some(at);
        self.stats.wills_published += 1;
    }

    /// The will `key`'s connection ended with DISCONNECT: it must never be delivered.
    pub fn will_discarded(&mut self, key: MessageKey) {
        let record = self.published.get_mut(&key).expect("discarded wills were armed");
        assert_eq!(record.will, WillState::Armed, "will {key:?} ended twice");
        record.will = WillState::Discarded;
        self.stats.wills_discarded += 1;
        let delivered = self.subscribers.iter().any(|s| s.seen.contains(&key));
        if delivered {
            self.violation(format!("will {key:?} was delivered after DISCONNECT [MQTT-3.1.2-10]"));
        }
    }

    /// The current model time, for `will_published`.
    pub fn now(&self) -> u64 {
        self.clock
    }

    /// The publisher wrote the PUBLISH of `key` again (DUP, after a reconnect).
    pub fn publish_resent(&mut self, key: MessageKey) {
        if let Some(record) = self.published.get_mut(&key) {
            record.retransmitted = true;
        }
    }

    /// A broker received a QoS 2 PUBLISH of `key` as a new publication (the runtime reports
    /// it): the first, or one fed after the broker's PUBCOMP had freed its packet id
    /// [MQTT-4.3.3-2].
    pub fn publication_received(&mut self, key: MessageKey) {
        *self.publications.entry(key).or_insert(0) += 1;
    }

    /// A broker was fed a PUBLISH of `key` from its publisher (the runtime reports each).
    pub fn publish_received(&mut self, key: MessageKey) {
        let rank = self.received.len() as u64 + 1;
        self.received.entry(key).or_insert(rank);
    }

    /// `key` reached `worker`'s broker (the runtime reports it).
    pub fn arrived(&mut self, key: MessageKey, worker: u16) {
        let at = self.tick();
        self.arrivals.entry((key, worker)).or_insert(at);
    }

    /// The PUBLISH of `key` (just sent) had RETAIN=1.
    pub fn publish_retained(&mut self, key: MessageKey) {
        assert!(self.published.contains_key(&key), "retained {key:?} was published");
        self.retained.entry(key.topic).or_default().push(key);
        self.stats.retained_published += 1;
    }

    /// The publisher received PUBACK (QoS 1) or PUBREC (QoS 2) for `key`.
    pub fn publish_acked(&mut self, key: MessageKey) {
        let at = self.tick();
        let record = self.published.get_mut(&key).expect("acked messages were published");
        if record.acked_at.is_none() {
            record.acked_at = Some(at);
            self.stats.acknowledged += 1;
        }
    }

    /// A new session starts for `client` (CONNECT with clean session 1 sent; or, for a
    /// persistent client, a CONNACK reporting no session present).
    pub fn session_started(&mut self, client: usize) {
        let at = self.tick();
        let subscriber = &mut self.subscribers[client];
        close_all(subscriber, at);
        subscriber.asked.clear();
        subscriber.seen_in_session.clear();
        subscriber.last_seq.clear();
        subscriber.first_subscribe.clear();
        subscriber.retained_got.clear();
    }

    /// `client`'s session ended (a clean session's connection is gone).
    pub fn session_ended(&mut self, client: usize) {
        let at = self.tick();
        close_all(&mut self.subscribers[client], at);
    }

    /// `client` sent a SUBSCRIBE of `filter` at `qos`. Returns the request's ticket, to be
    /// handed back with its SUBACK (and by the runtime when a broker processes it).
    pub fn subscribe_sent(&mut self, client: usize, filter: u16, qos: QoS) -> u64 {
        let at = self.tick();
        self.request_sent(client, at, Request { filter, qos: Some(qos) });
        let subscriber = &mut self.subscribers[client];
        subscriber.asked.insert(filter);
        subscriber.latest_request.insert(filter, at);
        subscriber.first_subscribe.entry(filter).or_insert(at);
        // A re-subscription replaces the old one; its QoS is known again at the SUBACK.
        if let Some(index) = subscriber.open.remove(&filter) {
            subscriber.intervals[index].until = at;
        }
        at
    }

    /// The SUBACK for the request `ticket` granted `granted` (None: 0x80) for `filter`. It
    /// opens a subscription only if that request is both the latest the client sent for the
    /// filter and the last a broker processed for it.
    pub fn subscribe_acked(
        &mut self,
        client: usize,
        filter: u16,
        granted: Option<QoS>,
        ticket: u64,
    ) {
        let at = self.tick();
        let processed_last = self.check_suback(client, filter, granted, ticket);
        let subscriber = &mut self.subscribers[client];
        if subscriber.latest_request.get(&filter) != Some(&ticket) || !processed_last {
            return; // A later SUBSCRIBE or UNSUBSCRIBE of this filter decides its state.
        }
        if let Some(index) = subscriber.open.remove(&filter) {
            subscriber.intervals[index].until = at;
        }
        if let Some(granted) = granted {
            subscriber.intervals.push(Interval { filter, granted, from: at, until: OPEN });
            subscriber.open.insert(filter, subscriber.intervals.len() - 1);
        }
    }

    /// `client` sent an UNSUBSCRIBE of `filter`; returns its ticket.
    pub fn unsubscribe_sent(&mut self, client: usize, filter: u16) -> u64 {
        let at = self.tick();
        self.request_sent(client, at, Request { filter, qos: None });
        let subscriber = &mut self.subscribers[client];
        subscriber.latest_request.insert(filter, at);
        if let Some(index) = subscriber.open.remove(&filter) {
            subscriber.intervals[index].until = at;
        }
        at
    }

    /// The subscriber's application got a message (the client's QoS 2 receiver already
    /// suppressed re-sent PUBLISHes whose packet id awaits PUBREL, as the spec asks).
    pub fn delivered(&mut self, client: usize, topic: &str, payload: &[u8], qos: QoS, dup: bool) {
        let _ = self.tick();
        self.stats.deliveries += 1;
        let Some((key, payload_qos)) = decode_payload(payload) else {
            // Only the broker's own `$SYS` topics carry payloads the sim did not write, and
            // only a client that asked for them may get them [MQTT-4.7.2-1].
            let universe = &self.universe;
            let asked = &self.subscribers[client].asked;
            let wanted = topic.starts_with('$')
                && asked.iter().any(|&f| filter_matches(&universe.filters[f as usize], topic));
            if !wanted {
                self.violation(format!(
                    "client {client} got a payload the sim never sent on {topic}"
                ));
            }
            return;
        };
        let Some(record) = self.published.get(&key).cloned() else {
            self.violation(format!("client {client} got {key:?}, which was never published"));
            return;
        };
        let topic_index = self.universe.topic_index(topic);
        if topic_index != Some(key.topic) || record.qos != payload_qos {
            self.violation(format!("client {client} got {key:?} on topic {topic}"));
            return;
        }
        if record.will == WillState::Discarded {
            self.violation(format!(
                "client {client} got will {key:?} after its DISCONNECT [MQTT-3.1.2-10]"
            ));
        }
        if qos > record.qos {
            self.violation(format!(
                "client {client} got {key:?} at {qos:?}, above its publish QoS {:?} [MQTT-3.8.4-6]",
                record.qos
            ));
        }
        let universe = &self.universe;
        let subscriber = &mut self.subscribers[client];
        if !subscriber.asked.iter().any(|&f| universe.matches(f, key.topic)) {
            let text = format!(
                "client {client} got {key:?} on {topic} without having asked for a matching \
                 filter in this session"
            );
            self.violation(text);
            return;
        }
        self.check_repeat(client, key, &record, qos, dup);
    }

    /// A stored retained message (RETAIN=1, sent for a new subscription [MQTT-3.3.1-8])
    /// reached `client`'s application. It must be a retained publish to `topic`, and not
    /// older than any retained publish to `topic` acknowledged before the client's first
    /// SUBSCRIBE of a matching filter this session [MQTT-3.3.1-6]. (That SUBSCRIBE is the
    /// earliest that can have caused this delivery, so it asks the least of it; a message is
    /// certainly older than another when it was acknowledged before the other was sent, as
    /// the topic's owner then applied it first.)
    pub fn retained_delivered(&mut self, client: usize, topic: &str, payload: &[u8], qos: QoS) {
        let at = self.tick();
        self.stats.retained_deliveries += 1;
        let Some((key, _)) = decode_payload(payload) else {
            if !topic.starts_with('$') {
                self.violation(format!(
                    "client {client} got a retained payload never sent on {topic}"
                ));
            }
            return;
        };
        let is_retained = self.retained.get(&key.topic).is_some_and(|keys| keys.contains(&key));
        let Some(record) = self.published.get(&key).filter(|_| is_retained) else {
            self.violation(format!("client {client} got {key:?} with RETAIN=1, never retained"));
            return;
        };
        if self.universe.topic_index(topic) != Some(key.topic) || qos > record.qos {
            self.violation(format!("client {client} got retained {key:?} on {topic} at {qos:?}"));
            return;
        }
        let delivered_acked = record.acked_at;
        let universe = &self.universe;
        let subscriber = &mut self.subscribers[client];
        subscriber.retained_got.insert(key.topic, at);
        let first = subscriber
            .first_subscribe
            .iter()
            .filter(|(&filter, _)| universe.matches(filter, key.topic))
            .map(|(_, &at)| at)
            .min();
        let Some(first) = first else {
            let text = format!("client {client} got retained {key:?} with no SUBSCRIBE for it");
            return self.violation(text);
        };
        let newer = self.retained[&key.topic].iter().find(|other| {
            let other = &self.published[*other];
            let required = other.acked_at.is_some_and(|acked| acked < first);
            required && delivered_acked.is_some_and(|acked| acked < other.sent_at)
        });
        if let Some(newer) = newer {
            self.violation(format!(
                "client {client} got retained {key:?}, older than {newer:?}, which was \
                 acknowledged before the client subscribed [MQTT-3.3.1-6]"
            ));
        }
    }

    /// With generous bounds (nothing dropped), every subscription held to the end at QoS 1 or
    /// 2 must have been sent a retained message for each matching topic that had a QoS 1/2
    /// retained publish acknowledged before its SUBSCRIBE was sent. Call after quiescing.
    pub fn check_retained_received(&mut self) {
        let mut problems = Vec::new();
        for (client, subscriber) in self.subscribers.iter().enumerate() {
            for (&filter, &index) in &subscriber.open {
                let interval = &subscriber.intervals[index];
                let Some(&asked_at) = subscriber.latest_request.get(&filter) else { continue };
                if interval.granted == QoS::AtMostOnce {
                    continue;
                }
                for (&topic, keys) in &self.retained {
                    let owed = self.universe.matches(filter, topic)
                        && keys.iter().any(|key| {
                            let record = &self.published[key];
                            record.qos != QoS::AtMostOnce
                                && record.acked_at.is_some_and(|acked| acked < asked_at)
                        });
                    if !owed {
                        continue;
                    }
                    self.stats.retained_expected += 1;
                    if subscriber.retained_got.get(&topic).is_none_or(|&got| got < asked_at) {
                        problems.push(format!(
                            "client {client} subscribed to filter {filter} and never got topic \
                             {topic}'s retained message [MQTT-3.3.1-6]"
                        ));
                    }
                }
            }
        }
        for problem in problems.into_iter().take(10) {
            self.violation(problem);
        }
    }

    fn check_repeat(
        &mut self,
        client: usize,
        key: MessageKey,
        record: &Published,
        qos: QoS,
        dup: bool,
    ) {
        let subscriber = &mut self.subscribers[client];
        let mut problems = Vec::new();
        if qos == QoS::ExactlyOnce {
            let deliveries = subscriber.seen_qos2.entry(key).or_insert(0);
            *deliveries += 1;
            // At least one: a delivered message was published (checked above), whether or
            // not the runtime's report of that publication has reached the model yet.
            let publications = self.publications.get(&key).copied().unwrap_or(0).max(1);
            if *deliveries > publications {
                problems.push(format!(
                    "client {client} got QoS 2 {key:?} a second time (dup flag {dup}; delivery \
                     {deliveries} of {publications} publications) [MQTT-4.3.3-2]"
                ));
            }
        }
        let first = subscriber.seen.insert(key);
        if !first && record.qos == QoS::AtMostOnce {
            problems.push(format!("client {client} got QoS 0 {key:?} twice"));
        }
        if !first && qos == QoS::AtLeastOnce {
            self.stats.duplicates_qos1 += 1;
        }
        if subscriber.seen_in_session.insert(key) && !record.retransmitted {
            match self.received.get(&key).copied() {
                None => problems.push(format!(
                    "client {client} got {key:?}, which no broker was reported to receive"
                )),
                Some(rank) => {
                    let order = (key.publisher, key.topic, qos);
                    let last = subscriber.last_seq.entry(order).or_insert((0, 0));
                    if rank < last.0 {
                        problems.push(format!(
                            "client {client} got {key:?} at {qos:?} after seq {} of the same \
                             publisher and topic, which the broker received after it \
                             [MQTT-4.6.0-6]",
                            last.1
                        ));
                    }
                    *last = (*last).max((rank, key.seq));
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// Every message the model expected and no subscriber application got. Call once
    /// everything has quiesced. `homes[client]` is the worker holding the client's session;
    /// `reach(key)` the workers the publisher's worker knew to want `key` (a bitmask).
    pub fn missing(&mut self, homes: &[u16], reach: impl Fn(&MessageKey) -> u32) -> Vec<Missing> {
        let mut by_filter: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.universe.filters.len()];
        for (client, subscriber) in self.subscribers.iter().enumerate() {
            for (index, interval) in subscriber.intervals.iter().enumerate() {
                let alive = subscriber.persistent || interval.until == OPEN;
                if alive && interval.granted != QoS::AtMostOnce {
                    by_filter[interval.filter as usize].push((client, index));
                }
            }
        }
        let mut missing = Vec::new();
        let mut checked = 0;
        for (key, record) in &self.published {
            let Some(acked_at) = record.acked_at else { continue };
            if record.qos == QoS::AtMostOnce {
                continue;
            }
            // Per expected subscriber, the latest end of a subscription that covered the publish.
            let mut expected: BTreeMap<usize, u64> = BTreeMap::new();
            for &filter in &self.universe.matching[key.topic as usize] {
                for &(client, index) in &by_filter[filter as usize] {
                    let interval = &self.subscribers[client].intervals[index];
                    if interval.from < record.sent_at && acked_at < interval.until {
                        let until = expected.entry(client).or_insert(0);
                        *until = (*until).max(interval.until);
                    }
                }
            }
            for (client, until) in expected {
                checked += 1;
                if self.subscribers[client].seen.contains(key) {
                    continue;
                }
                let home = homes[client];
                let cause = match self.arrivals.get(&(*key, home)) {
                    Some(&arrived) if arrived > until => Cause::TransitWindow,
                    Some(_) => Cause::Unexplained,
                    None if reach(key) & (1 << home) == 0 => Cause::InterestWindow,
                    None => Cause::Unexplained,
                };
                missing.push(Missing { subscriber: client, key: *key, qos: record.qos, cause });
            }
        }
        self.stats.expected_checked = checked;
        missing
    }

    /// The filters `client`'s session holds for certain, as far as the SUBACKs read and the
    /// requests sent and processed since tell (what the no-loss check expects deliveries for).
    pub fn acked_filters(&self, client: usize) -> Vec<u16> {
        self.subscribers[client].open.keys().copied().collect()
    }
}

fn close_all(subscriber: &mut Subscriber, at: u64) {
    for (_, index) in std::mem::take(&mut subscriber.open) {
        subscriber.intervals[index].until = at;
    }
}
