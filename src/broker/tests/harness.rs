//! A scripted-client harness: one or several `Broker`s, a fake clock, and clients that are
//! nothing but byte inboxes decoded with `protocol::decode`.
//!
//! The harness plays the runtime by the contract in `broker/mod.rs`: it drains actions after
//! every event, takes output on `Send` (and once more on `Close`), reports it sent at once
//! unless the client is stalled, routes `Remote` messages FIFO and moves handed-off
//! connections to their home worker. Clients can auto-acknowledge incoming QoS 1/2 flows.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::broker::{
    Action, Broker, BrokerConfig, CloseReason, ConnId, Millis, RemoteMsg, WorkerId,
};
use crate::protocol::{
    decode, Connack, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, SubackCode, Subscribe, TopicFilter, TopicName, Unsubscribe, Utf8Bytes,
};

/// A client of the harness (an index into its clients).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Client(usize);

/// How a client's connection ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ended {
    /// The broker emitted `Close` with this reason.
    ByBroker(CloseReason),
    /// The test closed it from the client side (`handle_closed`).
    ByPeer,
}

#[derive(Debug)]
struct ClientState {
    worker: WorkerId,
    conn: ConnId,
    inbox: BytesMut,
    received: VecDeque<Packet>,
    ended: Option<Ended>,
    /// Take output but do not report it sent (`handle_sent`) until `release`.
    stalled: bool,
    /// Bytes taken and not yet reported sent.
    unsent: usize,
    auto_ack: bool,
    next_packet_id: u16,
}

/// Brokers, clients and the clock.
#[derive(Debug)]
pub struct Cluster {
    pub brokers: Vec<Broker>,
    pub now: Millis,
    clients: Vec<ClientState>,
    by_conn: HashMap<(WorkerId, ConnId), Client>,
    remotes: VecDeque<(WorkerId, WorkerId, RemoteMsg)>,
    next_slot: u32,
    /// Every Remote message routed, by variant name, for tests of the cross-worker protocol.
    pub remote_log: Vec<(WorkerId, WorkerId, &'static str)>,
    /// While set, `run` leaves Remote messages queued (a slow pair channel); `step_remote`
    /// delivers them one at a time.
    remotes_held: bool,
}

pub fn pid(value: u16) -> PacketId {
    PacketId::new(value).expect("test packet ids are non-zero")
}

pub fn topic(text: &str) -> TopicName {
    TopicName::try_from(text).expect("valid test topic")
}

pub fn filter(text: &str) -> TopicFilter {
    TopicFilter::try_from(text).expect("valid test filter")
}

pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session,
        keep_alive_secs: 60,
        client_id: Utf8Bytes::from(client_id.to_owned()),
        will: None,
        username: None,
        password: None,
    }
}

pub fn will(topic_text: &str, payload: &'static [u8], qos: QoS, retain: bool) -> LastWill {
    LastWill { topic: topic(topic_text), payload: Bytes::from_static(payload), qos, retain }
}

pub fn publish_packet(topic_text: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic(topic_text),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// `publish_packet` as its client re-sends it: the same packet with DUP set.
pub fn resent_packet(topic_text: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) -> Packet {
    let mut packet = publish_packet(topic_text, payload, qos, retain, id);
    if let Packet::Publish(publish) = &mut packet {
        publish.dup = true;
    }
    packet
}

impl Cluster {
    pub fn new(workers: u16, config: BrokerConfig) -> Self {
        let now = Millis(1_000_000);
        let brokers =
            (0..workers).map(|w| Broker::new(config.clone(), WorkerId(w), workers, now)).collect();
        Self {
            brokers,
            now,
            clients: Vec::new(),
            by_conn: HashMap::new(),
            remotes: VecDeque::new(),
            next_slot: 1,
            remote_log: Vec::new(),
            remotes_held: false,
        }
    }

    pub fn single(config: BrokerConfig) -> Self {
        Self::new(1, config)
    }

    pub fn broker(&self, worker: u16) -> &Broker {
        &self.brokers[usize::from(worker)]
    }

    /// For calls the harness does not script (the admin API's); the caller handles the actions.
    pub fn broker_mut(&mut self, worker: u16) -> &mut Broker {
        &mut self.brokers[usize::from(worker)]
    }

    fn fresh_conn(&mut self) -> ConnId {
        self.next_slot += 1;
        ConnId::new(self.next_slot, 7)
    }

    /// Opens a connection on `worker` without sending anything.
    pub fn open(&mut self, worker: u16) -> Client {
        let conn = self.fresh_conn();
        let worker = WorkerId(worker);
        let client = Client(self.clients.len());
        self.clients.push(ClientState {
            worker,
            conn,
            inbox: BytesMut::new(),
            received: VecDeque::new(),
            ended: None,
            stalled: false,
            unsent: 0,
            auto_ack: false,
            next_packet_id: 0,
        });
        self.by_conn.insert((worker, conn), client);
        let now = self.now;
        self.brokers[worker.index()].handle_open(conn, now);
        self.run();
        client
    }

    /// Opens a connection on `worker`, sends `connect`, and returns the client and CONNACK.
    pub fn connect_on(&mut self, worker: u16, connect: Connect) -> (Client, Connack) {
        let client = self.open(worker);
        self.send(client, Packet::Connect(Box::new(connect)));
        let received = self.recv(client);
        match received.first() {
            Some(Packet::Connack(connack)) => {
                let connack = *connack;
                // Redelivered messages after the CONNACK stay readable.
                self.clients[client.0].received.extend(received.into_iter().skip(1));
                (client, connack)
            }
            other => panic!("expected CONNACK first [MQTT-3.2.0-1], got {other:?}"),
        }
    }

    /// Opens a connection on `worker` whose peer is `peer`, sends `connect`, and returns the
    /// client and CONNACK (as the runtime does: the address before the first packet).
    pub fn connect_from(
        &mut self,
        worker: u16,
        peer: std::net::SocketAddr,
        connect: Connect,
    ) -> (Client, Connack) {
        let client = self.open(worker);
        let conn = self.conn_of(client);
        self.brokers[usize::from(worker)].set_peer_addr(conn, peer.into());
        self.send(client, Packet::Connect(Box::new(connect)));
        let received = self.recv(client);
        match received.first() {
            Some(Packet::Connack(connack)) => (client, *connack),
            other => panic!("expected CONNACK first [MQTT-3.2.0-1], got {other:?}"),
        }
    }

    /// Gives every broker these password and ACL tables (what a reload does).
    pub fn set_auth(&mut self, tables: crate::auth::AuthTables) {
        let tables = std::sync::Arc::new(tables);
        for broker in &mut self.brokers {
            broker.set_auth(std::sync::Arc::clone(&tables));
        }
    }

    /// What SIGHUP does: every broker takes the new tables and disconnects the clients whose
    /// user was deleted or whose password changed; returns how many each closed.
    pub fn reload_auth(&mut self, tables: crate::auth::AuthTables) -> Vec<usize> {
        let tables = std::sync::Arc::new(tables);
        let now = self.now;
        let closed = self
            .brokers
            .iter_mut()
            .map(|broker| broker.reload_auth(std::sync::Arc::clone(&tables), now))
            .collect();
        self.run();
        closed
    }

    /// Opens a connection on `worker` from `peer` and sends `connect` as the runtime does on a
    /// `use_identity_as_username` TLS listener (`handle_connect_with_certificate`).
    pub fn connect_with_certificate(
        &mut self,
        worker: u16,
        peer: std::net::SocketAddr,
        connect: Connect,
    ) -> (Client, Connack) {
        let client = self.open(worker);
        let conn = self.conn_of(client);
        let now = self.now;
        let broker = &mut self.brokers[usize::from(worker)];
        broker.set_peer_addr(conn, peer.into());
        broker.handle_connect_with_certificate(conn, Box::new(connect), now);
        self.run();
        let received = self.recv(client);
        match received.first() {
            Some(Packet::Connack(connack)) => (client, *connack),
            other => panic!("expected CONNACK first [MQTT-3.2.0-1], got {other:?}"),
        }
    }

    /// Connects `client_id` on worker 0 and expects it accepted.
    pub fn connect(&mut self, client_id: &str, clean_session: bool) -> Client {
        let (client, connack) = self.connect_on(0, connect_packet(client_id, clean_session));
        assert_eq!(connack.code, ConnectReturnCode::Accepted, "{client_id} refused");
        client
    }

    pub fn set_auto_ack(&mut self, client: Client, on: bool) {
        self.clients[client.0].auto_ack = on;
    }

    /// Stops reporting the client's output as sent (the socket is not draining).
    pub fn stall(&mut self, client: Client) {
        self.clients[client.0].stalled = true;
    }

    /// Reports everything taken so far as sent and resumes normal draining.
    pub fn release(&mut self, client: Client) {
        let state = &mut self.clients[client.0];
        state.stalled = false;
        let (worker, conn, unsent) = (state.worker, state.conn, std::mem::take(&mut state.unsent));
        let now = self.now;
        self.brokers[worker.index()].handle_sent(conn, unsent, now);
        self.run();
    }

    /// Output taken from a stalled client's connection and not yet reported sent.
    pub fn unsent_bytes(&self, client: Client) -> usize {
        self.clients[client.0].unsent
    }

    /// Reports what a stalled client's socket took as sent, and stays stalled: the next
    /// output waits again (one socket drain at a time).
    pub fn drain_once(&mut self, client: Client) {
        let state = &mut self.clients[client.0];
        let (worker, conn, unsent) = (state.worker, state.conn, std::mem::take(&mut state.unsent));
        let now = self.now;
        self.brokers[worker.index()].handle_sent(conn, unsent, now);
        self.run();
    }

    pub fn conn_of(&self, client: Client) -> ConnId {
        self.clients[client.0].conn
    }

    pub fn where_is(&self, client: Client) -> WorkerId {
        self.clients[client.0].worker
    }

    pub fn send(&mut self, client: Client, packet: Packet) {
        let state = &self.clients[client.0];
        assert!(state.ended.is_none(), "{client:?} sends after its connection ended");
        let (worker, conn, now) = (state.worker, state.conn, self.now);
        self.brokers[worker.index()].handle_packet(conn, packet, now);
        self.run();
    }

    /// Sends a PUBLISH with the client's next packet id (ignored at QoS 0).
    pub fn publish(
        &mut self,
        client: Client,
        topic_text: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) {
        let id = self.next_packet_id(client);
        self.send(client, publish_packet(topic_text, payload, qos, retain, id));
    }

    /// The packet id the client used last.
    pub fn last_packet_id(&self, client: Client) -> u16 {
        self.clients[client.0].next_packet_id
    }

    pub fn next_packet_id(&mut self, client: Client) -> u16 {
        let state = &mut self.clients[client.0];
        state.next_packet_id = state.next_packet_id % u16::MAX + 1;
        state.next_packet_id
    }

    /// Holds Remote messages in their queue (true) or lets `run` deliver them again (false,
    /// which also delivers what was held).
    pub fn hold_remotes(&mut self, held: bool) {
        self.remotes_held = held;
        self.run();
    }

    /// Remote messages queued and not yet delivered.
    pub fn remotes_pending(&self) -> usize {
        self.remotes.len()
    }

    /// Delivers the oldest queued Remote message and settles what it caused (further Remote
    /// messages stay queued while they are held). False if none was queued.
    pub fn step_remote(&mut self) -> bool {
        let Some((from, to, msg)) = self.remotes.pop_front() else {
            return false;
        };
        let now = self.now;
        self.brokers[to.index()].handle_remote(from, msg, now);
        self.run();
        true
    }

    /// Delivers the oldest queued Remote message from `from` to `to` (other pairs' messages
    /// may be older: pairs are independent channels, each FIFO) and settles what it caused.
    /// False if that pair had none queued.
    pub fn step_link(&mut self, from: u16, to: u16) -> bool {
        let pair = (WorkerId(from), WorkerId(to));
        let Some(index) = self.remotes.iter().position(|(f, t, _)| (*f, *t) == pair) else {
            return false;
        };
        let (from, to, msg) = self.remotes.remove(index).expect("the position is in range");
        let now = self.now;
        self.brokers[to.index()].handle_remote(from, msg, now);
        self.run();
        true
    }

    /// Sends a SUBSCRIBE without waiting for its SUBACK; returns its packet id.
    pub fn send_subscribe(&mut self, client: Client, filters: &[(&str, QoS)]) -> PacketId {
        let packet_id = pid(self.next_packet_id(client));
        let filters = filters.iter().map(|(text, qos)| (filter(text), *qos)).collect();
        self.send(client, Packet::Subscribe(Subscribe { packet_id, filters }));
        packet_id
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub fn subscribe(&mut self, client: Client, filters: &[(&str, QoS)]) -> Vec<SubackCode> {
        let packet_id = self.send_subscribe(client, filters);
        self.decode_inbox(client);
        let received = &mut self.clients[client.0].received;
        let position = received.iter().position(|packet| matches!(packet, Packet::Suback(_)));
        // Everything else (earlier packets, retained messages after the SUBACK) stays readable.
        match position.and_then(|index| received.remove(index)) {
            Some(Packet::Suback(suback)) => {
                assert_eq!(suback.packet_id, packet_id, "[MQTT-3.8.4-2]");
                suback.return_codes
            }
            _ => panic!("expected SUBACK, got {received:?}"),
        }
    }

    pub fn unsubscribe(&mut self, client: Client, filters: &[&str]) -> PacketId {
        let packet_id = pid(self.next_packet_id(client));
        let filters = filters.iter().map(|text| filter(text)).collect();
        self.send(client, Packet::Unsubscribe(Unsubscribe { packet_id, filters }));
        packet_id
    }

    /// The client's socket goes away (abnormal close).
    pub fn drop_client(&mut self, client: Client) {
        let state = &mut self.clients[client.0];
        assert!(state.ended.is_none(), "{client:?} already ended");
        state.ended = Some(Ended::ByPeer);
        let (worker, conn, now) = (state.worker, state.conn, self.now);
        self.brokers[worker.index()].handle_closed(conn, now);
        self.run();
    }

    pub fn ended(&self, client: Client) -> Option<Ended> {
        self.clients[client.0].ended
    }

    /// Every packet received since the last call, decoded from the bytes the broker sent.
    pub fn recv(&mut self, client: Client) -> Vec<Packet> {
        self.decode_inbox(client);
        self.clients[client.0].received.drain(..).collect()
    }

    /// Decodes the inbox into `received`; returns how many packets were new.
    fn decode_inbox(&mut self, client: Client) -> usize {
        let state = &mut self.clients[client.0];
        let mut new = 0;
        while let Some(packet) =
            decode(&mut state.inbox, usize::MAX).expect("the broker sends well-formed packets")
        {
            state.received.push_back(packet);
            new += 1;
        }
        new
    }

    /// The PUBLISH packets received since the last call (other packets are dropped).
    pub fn recv_publishes(&mut self, client: Client) -> Vec<Publish> {
        self.recv(client)
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            })
            .collect()
    }

    /// Reads and acknowledges everything until nothing more arrives (as a well-behaved
    /// client does); returns the PUBLISHes in arrival order.
    pub fn recv_acking(&mut self, client: Client) -> Vec<Publish> {
        let mut publishes = Vec::new();
        loop {
            let received = self.recv(client);
            if received.is_empty() || self.ended(client).is_some() {
                return publishes;
            }
            for packet in received {
                match packet {
                    Packet::Publish(publish) => {
                        match (publish.qos, publish.packet_id) {
                            (QoS::AtLeastOnce, Some(id)) => self.send(client, Packet::Puback(id)),
                            (QoS::ExactlyOnce, Some(id)) => self.send(client, Packet::Pubrec(id)),
                            _ => {}
                        }
                        publishes.push(publish);
                    }
                    Packet::Pubrel(id) => self.send(client, Packet::Pubcomp(id)),
                    _ => {}
                }
            }
        }
    }

    /// Moves the clock forward by `millis`, ticking every broker whose deadline passed, in
    /// steps no larger than each deadline, as a runtime would.
    pub fn advance(&mut self, millis: u64) {
        let target = self.now.plus_millis(millis);
        loop {
            let next = self.brokers.iter().filter_map(Broker::next_deadline).min();
            match next {
                Some(deadline) if deadline <= target => {
                    self.now = self.now.max(deadline);
                    let now = self.now;
                    for broker in &mut self.brokers {
                        if broker.next_deadline().is_some_and(|d| d <= now) {
                            broker.handle_tick(now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    /// Drains every broker's actions and the remote queue until nothing moves.
    pub fn run(&mut self) {
        loop {
            let mut moved = false;
            for index in 0..self.brokers.len() {
                while let Some(action) = self.brokers[index].poll_action() {
                    moved = true;
                    self.apply(WorkerId(index as u16), action);
                }
            }
            let next = if self.remotes_held { None } else { self.remotes.pop_front() };
            if let Some((from, to, msg)) = next {
                moved = true;
                let now = self.now;
                self.brokers[to.index()].handle_remote(from, msg, now);
            }
            if !moved {
                break;
            }
        }
    }

    fn apply(&mut self, worker: WorkerId, action: Action) {
        match action {
            Action::Send(conn) => self.take(worker, conn),
            Action::Close(conn, reason) => {
                self.take(worker, conn);
                let client = self.by_conn.remove(&(worker, conn)).expect("closing a known conn");
                self.clients[client.0].ended = Some(Ended::ByBroker(reason));
            }
            Action::Remote { to, msg } => {
                self.remote_log.push((worker, to, remote_name(&msg)));
                self.remotes.push_back((worker, to, msg));
            }
            Action::Handoff { conn, to, connect, peer } => {
                assert_ne!(to, worker, "handoff to itself");
                let client =
                    self.by_conn.remove(&(worker, conn)).expect("handing off a known conn");
                let new_conn = self.fresh_conn();
                let state = &mut self.clients[client.0];
                state.worker = to;
                state.conn = new_conn;
                self.by_conn.insert((to, new_conn), client);
                let now = self.now;
                self.brokers[to.index()].handle_open(new_conn, now);
                if let Some(peer) = peer {
                    self.brokers[to.index()].set_peer_addr(new_conn, peer);
                }
                self.brokers[to.index()].handle_packet(new_conn, Packet::Connect(connect), now);
            }
        }
    }

    fn take(&mut self, worker: WorkerId, conn: ConnId) {
        let Some(&client) = self.by_conn.get(&(worker, conn)) else {
            return;
        };
        let mut segments = Vec::new();
        let taken = self.brokers[worker.index()].take_output(conn, &mut segments);
        assert_eq!(taken, segments.iter().map(Bytes::len).sum::<usize>());
        let state = &mut self.clients[client.0];
        for segment in segments {
            state.inbox.extend_from_slice(&segment);
        }
        if state.stalled {
            state.unsent += taken;
        } else if taken > 0 && state.ended.is_none() {
            let now = self.now;
            self.brokers[worker.index()].handle_sent(conn, taken, now);
        }
        if self.clients[client.0].auto_ack {
            self.auto_ack(client);
        }
    }

    fn auto_ack(&mut self, client: Client) {
        let new = self.decode_inbox(client);
        let state = &self.clients[client.0];
        let replies: Vec<Packet> = state
            .received
            .iter()
            .skip(state.received.len() - new)
            .filter_map(|packet| match packet {
                Packet::Publish(Publish { qos: QoS::AtLeastOnce, packet_id: Some(id), .. }) => {
                    Some(Packet::Puback(*id))
                }
                Packet::Publish(Publish { qos: QoS::ExactlyOnce, packet_id: Some(id), .. }) => {
                    Some(Packet::Pubrec(*id))
                }
                Packet::Pubrel(id) => Some(Packet::Pubcomp(*id)),
                _ => None,
            })
            .collect();
        let (worker, conn, now) = (state.worker, state.conn, self.now);
        for reply in replies {
            if self.clients[client.0].ended.is_some() {
                break;
            }
            self.brokers[worker.index()].handle_packet(conn, reply, now);
        }
    }
}

fn remote_name(msg: &RemoteMsg) -> &'static str {
    match msg {
        RemoteMsg::Publish(_) => "Publish",
        RemoteMsg::Interest { .. } => "Interest",
        RemoteMsg::InterestAck => "InterestAck",
        RemoteMsg::Retain { .. } => "Retain",
        RemoteMsg::RetainApplied { .. } => "RetainApplied",
        RemoteMsg::RetainAck(_) => "RetainAck",
        RemoteMsg::RetainUnchanged(_) => "RetainUnchanged",
        RemoteMsg::Stats(_) => "Stats",
        RemoteMsg::Durable { .. } => "Durable",
        RemoteMsg::PublishOnce(_) => "PublishOnce",
        RemoteMsg::Qos2Release { .. } => "Qos2Release",
    }
}

/// A client id whose home is `worker` among `workers` (for placing sessions in tests).
pub fn client_id_on(worker: u16, workers: u16, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| crate::broker::home_worker(id.as_bytes(), workers) == WorkerId(worker))
        .expect("some id lands on every worker")
}

/// A client homed on `worker` among the cluster's workers, connected there.
pub fn client_on(cluster: &mut Cluster, worker: u16, name: &str, clean: bool) -> Client {
    let workers = cluster.brokers.len() as u16;
    let id = client_id_on(worker, workers, name);
    let (client, _) = cluster.connect_on(worker, connect_packet(&id, clean));
    assert_eq!(cluster.where_is(client), WorkerId(worker));
    client
}

/// A topic whose retained updates are owned by `owner` among `workers`.
pub fn topic_owned_by(owner: u16, workers: u16, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}/{n}"))
        .find(|t| crate::broker::home_worker(t.as_bytes(), workers) == WorkerId(owner))
        .expect("some topic lands on every worker")
}
