//! A simulated MQTT 3.1.1 client: what a well-behaved client library does, plus the ways real
//! clients misbehave (stop reading, hold acknowledgements back, crash mid-flow, open a second
//! connection with the same client id).
//!
//! The client keeps its session state across connections when its session is persistent: the
//! QoS 1/2 messages it sent and has no final acknowledgement for are re-sent on reconnect with
//! DUP set, in their original order, and PUBRELs likewise [MQTT-4.4.0-1] [MQTT-4.6.0-1]; the
//! packet ids of QoS 2 messages it received and has not seen PUBREL for are remembered, so a
//! re-delivered PUBLISH is acknowledged again but not handed to the application twice
//! [MQTT-4.3.3-2]. Everything the client sees or does that the model cares about goes to the
//! [`Model`]; every protocol breach it sees from the broker is a model violation.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ringmq::broker::{Millis, WorkerId};
use ringmq::protocol::{
    self, Connack, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, SubackCode, Subscribe, TopicFilter, TopicName, Unsubscribe, Utf8Bytes,
};

use super::model::{encode_payload, MessageKey, Model};
use super::rng::Rng;
use super::runtime::{ConnIndex, Runtime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Offline,
    /// CONNECT written, no CONNACK yet.
    Connecting,
    Connected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    Sent1,
    /// QoS 2 sent, waiting for PUBREC.
    Sent2,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Clone, Debug)]
struct Outgoing {
    key: MessageKey,
    publish: Publish,
    stage: Stage,
    /// Order of first transmission, for re-sending in order [MQTT-4.6.0-1].
    order: u64,
}

/// A SUBSCRIBE or UNSUBSCRIBE whose answer was lost with its connection; re-asked on the next
/// connection so the model knows exactly which filters the session holds.
#[derive(Clone, Debug)]
enum Request {
    Subscribe(Vec<(u16, QoS)>),
    Unsubscribe(Vec<u16>),
}

/// How a client behaves, fixed per client by the seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Temper {
    /// Sometimes stops reading its socket for a while.
    pub stalls: bool,
    /// Holds acknowledgements back and sends them in bursts.
    pub lazy_acks: bool,
    /// Keepalive in seconds (0: none); the client pings at half of it.
    pub keepalive_secs: u16,
    /// Now and then sends a second CONNECT on a connection (a protocol violation).
    pub rude: bool,
    /// Puts a will in its CONNECTs.
    pub will: bool,
    /// Per mille of its publishes sent with RETAIN=1 (from `SimConfig::retain_per_mille`).
    pub retain_per_mille: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub connects: u64,
    pub refused: u64,
    pub takeovers: u64,
    pub crashes: u64,
    pub disconnects: u64,
    pub resent_publishes: u64,
    pub resent_pubrels: u64,
    pub second_connects: u64,
}

#[derive(Debug)]
pub struct Client {
    pub index: usize,
    pub client_id: String,
    pub clean: bool,
    pub temper: Temper,
    pub conn: Option<ConnIndex>,
    pub phase: Phase,
    pub reading: bool,
    /// The broker acknowledged a persistent session for us: it must be present from now on.
    pub had_session: bool,
    /// Ever sent a CONNECT.
    pub ever_connected: bool,
    /// The worker that last accepted our CONNECT: where our session lives.
    pub home: Option<WorkerId>,
    got_connack: bool,
    last_sent: Millis,
    next_packet_id: PacketId,
    send_order: u64,
    outgoing: BTreeMap<u16, Outgoing>,
    /// QoS 2 packet ids received and not yet released, with the message each carried.
    incoming_qos2: BTreeMap<u16, MessageKey>,
    /// QoS 1 packet ids received whose PUBACK is held back.
    held_pubacks: BTreeSet<u16>,
    held_acks: Vec<Packet>,
    /// SUBSCRIBEs awaiting SUBACK: (filter, requested QoS, the model's ticket) each.
    pending_subscribes: BTreeMap<u16, Vec<(u16, QoS, u64)>>,
    pending_unsubscribes: BTreeMap<u16, Vec<u16>>,
    redo: Vec<Request>,
    next_seq: BTreeMap<u16, u32>,
    /// The will of the current connection: its key (the sequence number is the connection's
    /// number) and QoS.
    will: Option<(MessageKey, QoS)>,
    pub stats: ClientStats,
}

/// Limits on how much one client has going at once.
pub const OUTGOING_MAX: usize = 8;

impl Client {
    pub fn new(index: usize, clean: bool, temper: Temper) -> Self {
        Self {
            index,
            client_id: format!("sim-{index}"),
            clean,
            temper,
            conn: None,
            phase: Phase::Offline,
            reading: true,
            had_session: false,
            ever_connected: false,
            home: None,
            got_connack: false,
            last_sent: Millis(0),
            next_packet_id: PacketId::new(1).expect("1 is a valid packet id"),
            send_order: 0,
            outgoing: BTreeMap::new(),
            incoming_qos2: BTreeMap::new(),
            held_pubacks: BTreeSet::new(),
            held_acks: Vec::new(),
            pending_subscribes: BTreeMap::new(),
            pending_unsubscribes: BTreeMap::new(),
            redo: Vec::new(),
            next_seq: BTreeMap::new(),
            will: None,
            stats: ClientStats::default(),
        }
    }

    /// The client has nothing outstanding: connected, nothing unacknowledged either way.
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Connected
            && self.outgoing.is_empty()
            && self.incoming_qos2.is_empty()
            && self.held_acks.is_empty()
            && self.pending_subscribes.is_empty()
            && self.pending_unsubscribes.is_empty()
            && self.redo.is_empty()
    }

    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// QoS 1/2 messages this client holds unacknowledged: each is in flight at the broker.
    pub fn inflight_seen(&self) -> usize {
        self.incoming_qos2.len() + self.held_pubacks.len()
    }

    fn write(&mut self, rt: &mut Runtime, packet: Packet) {
        let conn = self.conn.expect("only a connected client writes");
        self.last_sent = rt.now;
        rt.client_write(conn, packet);
    }

    /// Writes a SUBSCRIBE or UNSUBSCRIBE with the model's tickets for its filters, so the
    /// runtime can tell the model when a broker processes it.
    fn write_request(&mut self, rt: &mut Runtime, packet: Packet, tickets: Vec<u64>) {
        let conn = self.conn.expect("only a connected client writes");
        self.last_sent = rt.now;
        rt.client_write_request(conn, packet, tickets);
    }

    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            let used = self.outgoing.contains_key(&id.get())
                || self.pending_subscribes.contains_key(&id.get())
                || self.pending_unsubscribes.contains_key(&id.get());
            if !used {
                return id;
            }
        }
    }

    /// Opens a connection to `worker` and sends CONNECT. A client that still has a connection
    /// abandons it without closing it: the broker must take the session over [MQTT-3.1.4-2].
    pub fn connect(&mut self, rt: &mut Runtime, model: &mut Model, worker: WorkerId) {
        if let Some(old) = self.conn.take() {
            self.stats.takeovers += 1;
            self.connection_lost(model);
            rt.client_abandon(old);
        }
        if self.clean {
            self.reset_session();
            model.session_started(self.index);
        }
        let conn = rt.open(self.index, worker);
        self.conn = Some(conn);
        self.phase = Phase::Connecting;
        self.got_connack = false;
        self.ever_connected = true;
        self.stats.connects += 1;
        self.arm_will(rt, model, conn, worker);
        self.write(rt, Packet::Connect(Box::new(self.connect_packet(model))));
        // Pipelined behind CONNECT (a client need not wait for CONNACK): everything sent on
        // earlier connections and not acknowledged goes again.
        self.resend(rt, model);
    }

    fn arm_will(&mut self, rt: &mut Runtime, model: &mut Model, conn: ConnIndex, worker: WorkerId) {
        self.will = None;
        if !self.temper.will {
            return;
        }
        let universe = &model.universe;
        let will_topics = universe.topics.len() - universe.publish_topics;
        let topic = (universe.publish_topics + self.index % will_topics) as u16;
        let name = universe.topics[topic as usize].clone();
        let seq = self.stats.connects as u32;
        let key = MessageKey { publisher: self.index as u32, topic, seq };
        // Any QoS, varied by client, connection and worker.
        let mix = seq as usize + self.index + worker.index();
        let qos = QoS::from_u8((mix % 3) as u8).expect("0..3 are QoS values");
        model.will_armed(key, qos);
        rt.set_will(conn, name, Bytes::from(encode_payload(key, qos, 0)));
        self.will = Some((key, qos));
    }

    fn connect_packet(&self, model: &Model) -> Connect {
        let will = self.will.map(|(key, qos)| LastWill {
            topic: TopicName::try_from(model.universe.topics[key.topic as usize].as_str())
                .expect("the universe holds valid topic names"),
            payload: Bytes::from(encode_payload(key, qos, 0)),
            qos,
            retain: false,
        });
        Connect {
            protocol: ProtocolVersion::V311,
            clean_session: self.clean,
            keep_alive_secs: self.temper.keepalive_secs,
            client_id: Utf8Bytes::from(self.client_id.clone()),
            will,
            username: None,
            password: None,
        }
    }

    /// Sends CONNECT again on an established connection: the broker must close it
    /// [MQTT-3.1.0-2] (the runtime checks it did). The client learns of it by EOF.
    pub fn send_second_connect(&mut self, rt: &mut Runtime, model: &Model) {
        if self.phase != Phase::Connected {
            return;
        }
        self.stats.second_connects += 1;
        self.write(rt, Packet::Connect(Box::new(self.connect_packet(model))));
    }

    fn reset_session(&mut self) {
        self.outgoing.clear();
        self.incoming_qos2.clear();
        self.held_pubacks.clear();
        self.held_acks.clear();
        self.pending_subscribes.clear();
        self.pending_unsubscribes.clear();
        self.redo.clear();
    }

    /// The current connection is gone (from the client's side): unanswered requests are
    /// re-asked next time, held acknowledgements are lost with the socket.
    fn connection_lost(&mut self, model: &mut Model) {
        self.phase = Phase::Offline;
        self.held_acks.clear();
        self.held_pubacks.clear();
        for (_, filters) in std::mem::take(&mut self.pending_subscribes) {
            let filters = filters.into_iter().map(|(filter, qos, _)| (filter, qos)).collect();
            self.redo.push(Request::Subscribe(filters));
        }
        for (_, filters) in std::mem::take(&mut self.pending_unsubscribes) {
            self.redo.push(Request::Unsubscribe(filters));
        }
        if self.clean {
            model.session_ended(self.index);
            self.reset_session();
        }
    }

    /// Sends DISCONNECT and closes the socket without reading further.
    pub fn disconnect(&mut self, rt: &mut Runtime, model: &mut Model) {
        let Some(conn) = self.conn else { return };
        // A client flushes what it owes before saying goodbye.
        self.flush_acks(rt, usize::MAX);
        self.write(rt, Packet::Disconnect);
        rt.client_shutdown(conn);
        rt.client_finished(conn);
        self.conn = None;
        self.stats.disconnects += 1;
        self.connection_lost(model);
    }

    /// The client's process or network dies: the socket vanishes, unsent bytes with it.
    pub fn crash(&mut self, rt: &mut Runtime, model: &mut Model) {
        let Some(conn) = self.conn.take() else { return };
        rt.client_crash(conn);
        self.stats.crashes += 1;
        self.connection_lost(model);
    }

    pub fn publish(&mut self, rt: &mut Runtime, model: &mut Model, rng: &mut Rng) {
        if self.conn.is_none() || self.outgoing.len() >= OUTGOING_MAX {
            return;
        }
        let topic = rng.index(model.universe.publish_topics) as u16;
        let qos = QoS::from_u8(rng.below(3) as u8).expect("0..3 are QoS values");
        let seq = self.next_seq.entry(topic).or_insert(0);
        *seq += 1;
        let key = MessageKey { publisher: self.index as u32, topic, seq: *seq };
        let filler = if rng.chance(50) { rng.between(512, 1100) } else { rng.below(48) };
        let payload = Bytes::from(encode_payload(key, qos, filler as usize));
        let name = TopicName::try_from(model.universe.topics[topic as usize].as_str())
            .expect("the universe holds valid topic names");
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.allocate_packet_id());
        // No draw when retained messages are off, so such runs replay as before. Only QoS 1/2
        // messages are retained: a QoS 0 one may be dropped on its way to a new subscriber, and
        // its acknowledgement-free update is left to the broker's own tests.
        let per_mille = self.temper.retain_per_mille;
        let retain = per_mille > 0 && qos != QoS::AtMostOnce && rng.chance(per_mille);
        let publish = Publish { dup: false, qos, retain, topic: name, packet_id, payload };
        model.publish_sent(key, qos);
        if retain {
            model.publish_retained(key);
        }
        if let Some(id) = packet_id {
            let stage = if qos == QoS::AtLeastOnce { Stage::Sent1 } else { Stage::Sent2 };
            self.send_order += 1;
            let entry = Outgoing { key, publish: publish.clone(), stage, order: self.send_order };
            self.outgoing.insert(id.get(), entry);
        }
        self.write(rt, Packet::Publish(publish));
    }

    pub fn subscribe(&mut self, rt: &mut Runtime, model: &mut Model, filters: Vec<(u16, QoS)>) {
        if self.conn.is_none() || filters.is_empty() {
            return;
        }
        let id = self.allocate_packet_id();
        let mut wire = Vec::new();
        let mut pending = Vec::new();
        for (filter, qos) in filters {
            pending.push((filter, qos, model.subscribe_sent(self.index, filter, qos)));
            let text = model.universe.filters[filter as usize].as_str();
            let filter = TopicFilter::try_from(text).expect("the universe holds valid filters");
            wire.push((filter, qos));
        }
        let tickets = pending.iter().map(|&(_, _, ticket)| ticket).collect();
        self.pending_subscribes.insert(id.get(), pending);
        let packet = Packet::Subscribe(Subscribe { packet_id: id, filters: wire });
        self.write_request(rt, packet, tickets);
    }

    pub fn unsubscribe(&mut self, rt: &mut Runtime, model: &mut Model, filters: Vec<u16>) {
        if self.conn.is_none() || filters.is_empty() {
            return;
        }
        let id = self.allocate_packet_id();
        let mut wire = Vec::new();
        let mut tickets = Vec::new();
        for &filter in &filters {
            tickets.push(model.unsubscribe_sent(self.index, filter));
            let text = model.universe.filters[filter as usize].as_str();
            wire.push(TopicFilter::try_from(text).expect("the universe holds valid filters"));
        }
        self.pending_unsubscribes.insert(id.get(), filters);
        let packet = Packet::Unsubscribe(Unsubscribe { packet_id: id, filters: wire });
        self.write_request(rt, packet, tickets);
    }

    pub fn ping_if_due(&mut self, rt: &mut Runtime) {
        let keepalive_millis = u64::from(self.temper.keepalive_secs) * 1000;
        if keepalive_millis == 0 || self.conn.is_none() {
            return;
        }
        if rt.now.since(self.last_sent) >= keepalive_millis / 2 {
            self.write(rt, Packet::Pingreq);
        }
    }

    /// Sends up to `count` held acknowledgements, oldest first.
    pub fn flush_acks(&mut self, rt: &mut Runtime, count: usize) {
        if self.conn.is_none() {
            return;
        }
        let count = count.min(self.held_acks.len());
        for packet in self.held_acks.drain(..count).collect::<Vec<_>>() {
            if let Packet::Puback(id) = &packet {
                self.held_pubacks.remove(&id.get());
            }
            self.write(rt, packet);
        }
    }

    fn acknowledge(&mut self, rt: &mut Runtime, packet: Packet) {
        if self.temper.lazy_acks || !self.held_acks.is_empty() {
            if let Packet::Puback(id) = &packet {
                self.held_pubacks.insert(id.get());
            }
            self.held_acks.push(packet);
        } else {
            self.write(rt, packet);
        }
    }

    /// Reads and handles everything in the socket's receive buffer; handles EOF after it.
    pub fn read(&mut self, rt: &mut Runtime, model: &mut Model) {
        let Some(conn) = self.conn else { return };
        loop {
            let (buffer, eof) = rt.client_buffer(conn);
            match protocol::decode(buffer, usize::MAX >> 4) {
                Ok(Some(packet)) => {
                    rt.trace(self.index, || format!("read {}", super::runtime::describe(&packet)));
                    self.handle(rt, model, packet)
                }
                Ok(None) if eof => {
                    if !buffer.is_empty() {
                        model.violation(format!(
                            "client {}: connection closed in the middle of a packet",
                            self.index
                        ));
                    }
                    rt.client_finished(conn);
                    self.conn = None;
                    self.connection_lost(model);
                    return;
                }
                Ok(None) => break,
                Err(error) => {
                    model.violation(format!(
                        "client {}: broker output does not decode: {error}",
                        self.index
                    ));
                    self.crash(rt, model);
                    return;
                }
            }
            if self.conn != Some(conn) {
                return;
            }
        }
        rt.client_drained(conn);
    }

    fn handle(&mut self, rt: &mut Runtime, model: &mut Model, packet: Packet) {
        let first = !self.got_connack;
        match packet {
            Packet::Connack(connack) if first => {
                let conn = self.conn.expect("a client reads only its current connection");
                self.home = Some(rt.conns[conn].worker);
                if connack.code == ConnectReturnCode::Accepted {
                    rt.mark_accepted(conn);
                }
                self.on_connack(model, connack)
            }
            _ if first => model.violation(format!(
                "client {}: first packet from the broker is {}, not CONNACK [MQTT-3.2.0-1]",
                self.index,
                packet.name()
            )),
            Packet::Publish(publish) => self.on_publish(rt, model, publish),
            Packet::Puback(id) => self.on_ack(rt, model, id, Stage::Sent1),
            Packet::Pubrec(id) => self.on_ack(rt, model, id, Stage::Sent2),
            Packet::Pubcomp(id) => self.on_ack(rt, model, id, Stage::Released),
            Packet::Pubrel(id) => {
                self.incoming_qos2.remove(&id.get());
                self.acknowledge(rt, Packet::Pubcomp(id));
            }
            Packet::Suback(suback) => self.on_suback(model, suback.packet_id, suback.return_codes),
            Packet::Unsuback(id) => {
                if self.pending_unsubscribes.remove(&id.get()).is_none() {
                    model.violation(format!("client {}: UNSUBACK for unknown {id:?}", self.index));
                }
            }
            Packet::Pingresp => {}
            other => model.violation(format!(
                "client {}: the broker sent {} [MQTT-3.1.0/3.x: server never sends it]",
                self.index,
                other.name()
            )),
        }
    }

    fn on_connack(&mut self, model: &mut Model, connack: Connack) {
        self.got_connack = true;
        if connack.code != ConnectReturnCode::Accepted {
            self.stats.refused += 1;
            if connack.session_present {
                model.violation(format!(
                    "client {}: refused CONNACK with session present [MQTT-3.2.2-4]",
                    self.index
                ));
            }
            return;
        }
        if self.clean && connack.session_present {
            model.violation(format!(
                "client {}: clean session got session present [MQTT-3.2.2-1]",
                self.index
            ));
        }
        if !self.clean && self.had_session && !connack.session_present {
            model.violation(format!(
                "client {}: persistent session lost: session present 0 [MQTT-3.2.2-2]",
                self.index
            ));
        }
        if !self.clean && !connack.session_present {
            // The broker holds nothing of ours: no packet id of ours awaits its PUBREL. (The
            // model's session is not restarted: SUBSCRIBEs pipelined after this CONNECT belong
            // to the session it just created.)
            self.incoming_qos2.clear();
        }
        if !self.clean {
            self.had_session = true;
        }
        self.phase = Phase::Connected;
    }

    /// Re-sends unacknowledged PUBLISHes (DUP) and PUBRELs in their original order, then the
    /// subscription requests whose answers were lost.
    fn resend(&mut self, rt: &mut Runtime, model: &mut Model) {
        let mut pending: Vec<(u64, u16)> =
            self.outgoing.iter().map(|(id, out)| (out.order, *id)).collect();
        pending.sort_unstable();
        for (_, id) in pending {
            let out = &self.outgoing[&id];
            let packet = match out.stage {
                Stage::Sent1 | Stage::Sent2 => {
                    model.publish_resent(out.key);
                    self.stats.resent_publishes += 1;
                    Packet::Publish(Publish { dup: true, ..out.publish.clone() })
                }
                Stage::Released => {
                    self.stats.resent_pubrels += 1;
                    let packet_id = PacketId::new(id).expect("stored ids are non-zero");
                    Packet::Pubrel(packet_id)
                }
            };
            self.write(rt, packet);
        }
        for request in std::mem::take(&mut self.redo) {
            match request {
                Request::Subscribe(filters) => self.subscribe(rt, model, filters),
                Request::Unsubscribe(filters) => self.unsubscribe(rt, model, filters),
            }
        }
    }

    /// Hands a PUBLISH to the application: a stored retained message (RETAIN=1, sent for a
    /// new subscription) to the model's retained check, any other to the delivery checks.
    fn deliver(&self, model: &mut Model, topic: &str, publish: &Publish) {
        if publish.retain {
            model.retained_delivered(self.index, topic, &publish.payload, publish.qos);
        } else {
            model.delivered(self.index, topic, &publish.payload, publish.qos, publish.dup);
        }
    }

    fn on_publish(&mut self, rt: &mut Runtime, model: &mut Model, publish: Publish) {
        let topic = publish.topic.as_str().to_string();
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => self.deliver(model, &topic, &publish),
            (QoS::AtLeastOnce, Some(id)) => {
                self.deliver(model, &topic, &publish);
                self.acknowledge(rt, Packet::Puback(id));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let key = super::model::decode_payload(&publish.payload).map(|(k, _)| k);
                match (self.incoming_qos2.get(&id.get()), key) {
                    (Some(held), Some(key)) if *held == key && publish.dup => {}
                    (Some(held), _) => model.violation(format!(
                        "client {}: QoS 2 PUBLISH {key:?} (dup {}) reuses {id:?}, still held \
                         for {held:?} awaiting PUBREL [MQTT-2.3.1-2]",
                        self.index, publish.dup
                    )),
                    (None, key) => {
                        let key = key.unwrap_or(MessageKey { publisher: 0, topic: 0, seq: 0 });
                        self.incoming_qos2.insert(id.get(), key);
                        self.deliver(model, &topic, &publish);
                    }
                }
                self.acknowledge(rt, Packet::Pubrec(id));
            }
            (_, None) => model.violation(format!(
                "client {}: QoS {:?} PUBLISH without packet id",
                self.index, publish.qos
            )),
        }
    }

    fn on_ack(&mut self, rt: &mut Runtime, model: &mut Model, id: PacketId, stage: Stage) {
        let Some(out) = self.outgoing.get_mut(&id.get()) else {
            model.violation(format!(
                "client {}: {stage:?}-answer for {id:?}, which has nothing in flight",
                self.index
            ));
            return;
        };
        if out.stage != stage {
            model.violation(format!(
                "client {}: {id:?} is at {:?} but the broker answered as for {stage:?}",
                self.index, out.stage
            ));
            return;
        }
        match stage {
            Stage::Sent1 => {
                model.publish_acked(out.key);
                self.outgoing.remove(&id.get());
            }
            Stage::Sent2 => {
                model.publish_acked(out.key);
                out.stage = Stage::Released;
                self.write(rt, Packet::Pubrel(id));
            }
            Stage::Released => {
                self.outgoing.remove(&id.get());
            }
        }
    }

    fn on_suback(&mut self, model: &mut Model, id: PacketId, codes: Vec<SubackCode>) {
        let Some(filters) = self.pending_subscribes.remove(&id.get()) else {
            model.violation(format!("client {}: SUBACK for unknown {id:?}", self.index));
            return;
        };
        if codes.len() != filters.len() {
            model.violation(format!(
                "client {}: SUBACK has {} codes for {} filters [MQTT-3.8.4-5]",
                self.index,
                codes.len(),
                filters.len()
            ));
            return;
        }
        for ((filter, requested, ticket), code) in filters.into_iter().zip(codes) {
            let granted = match code {
                SubackCode::Granted(qos) => Some(qos),
                SubackCode::Failure => None,
            };
            if granted.is_some_and(|g| g > requested) {
                model.violation(format!(
                    "client {}: granted {granted:?} above requested {requested:?} [MQTT-3.9.3-2]",
                    self.index
                ));
            }
            model.subscribe_acked(self.index, filter, granted, ticket);
        }
    }
}
