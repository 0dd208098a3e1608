//! The scenario: thousands of clients doing random MQTT things against several workers, then a
//! quiet phase in which every persistent client comes back and everything settles, then the
//! final checks.
//!
//! A run is a pure function of its [`SimConfig`] (itself derived from one seed), so a failure
//! is replayed by its seed alone.

use ringmq::broker::{BrokerConfig, WorkerId};
use ringmq::protocol::QoS;

use super::client::{Client, Phase, Temper};
use super::introspect;
use super::model::{decode_payload, Missing, Model, ModelStats, Universe};
use super::rng::Rng;
use super::runtime::{ConnState, Processed, Runtime, RuntimeKnobs, RuntimeStats, Wire};

/// Which bounds the brokers run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bounds far above what a run can reach: nothing may be dropped.
    Generous,
    /// Bounds a run hits all the time: they must hold, and every loss must be counted.
    Tiny,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub mode: Mode,
    pub workers: u16,
    pub clients: usize,
    pub steps: u64,
    pub wire: Wire,
    pub persistent_per_mille: u64,
    pub broker: BrokerConfig,
    pub knobs: RuntimeKnobs,
    /// Per mille of publishes sent with RETAIN=1; 0 (the default: no random draw, so seeds
    /// replay as before) leaves retained messages out of the run.
    pub retain_per_mille: u64,
}

impl SimConfig {
    /// Everything a run varies, chosen by `seed`; `clients` and `steps` set its size.
    pub fn from_seed(seed: u64, mode: Mode, clients: usize, steps: u64) -> Self {
        let mut rng = Rng::from_seed(seed ^ 0x5EED_C0DE);
        let workers = rng.between(1, 4) as u16;
        let wire = if rng.chance(700) { Wire::Bytes } else { Wire::Packets };
        let mut broker = BrokerConfig {
            max_packet_size: 4096,
            max_inflight_messages: rng.between(1, 20) as u16,
            max_queued_messages: 1_000_000,
            max_queued_bytes: 1 << 30,
            outbuf_bytes_max: [8 << 10, 64 << 10, 1 << 20][rng.index(3)],
            queue_qos0_messages: rng.chance(500),
            max_keepalive_secs: 0,
            connect_timeout_secs: 10,
            persistent_client_expiration_secs: 0,
            sessions_max: 1_000_000,
            subscriptions_per_session_max: 1000,
            retained_messages_max: 1_000_000,
            retained_expiry_secs: 0,
            sys_interval_secs: [0, 1, 10][rng.index(3)],
            allow_anonymous: true,
            // Bounds the sim does not exercise keep the broker's defaults.
            ..BrokerConfig::default()
        };
        if mode == Mode::Tiny {
            broker.max_inflight_messages = rng.between(1, 3) as u16;
            broker.max_queued_messages = rng.between(2, 8) as usize;
            broker.max_queued_bytes = rng.between(1500, 6000) as usize;
            broker.outbuf_bytes_max = rng.between(256, 3000) as usize;
            broker.subscriptions_per_session_max = rng.between(2, 5) as usize;
        }
        let knobs = RuntimeKnobs {
            link_delay_steps_max: [0, 3, 30][rng.index(3)],
            socket_bytes_max: [2 << 10, 16 << 10, 64 << 10][rng.index(3)],
            read_chunk_bytes_max: [7, 512, 8 << 10][rng.index(3)],
            fault: None,
        };
        Self {
            seed,
            mode,
            workers,
            clients,
            steps,
            wire,
            persistent_per_mille: rng.between(200, 700),
            broker,
            knobs,
            retain_per_mille: 0,
        }
    }
}

/// Topics that carry only wills (`will/0` ..): client `i` uses `will/{i % WILL_TOPICS}`.
pub const WILL_TOPICS: usize = 4;

/// The topic space: `t/a/b` for 8 × 4 topics, the will topics, every exact filter, and a few
/// wildcards.
pub fn universe() -> Universe {
    let mut topics = Vec::new();
    for a in 0..8 {
        for b in 0..4 {
            topics.push(format!("t/{a}/{b}"));
        }
    }
    let publish_topics = topics.len();
    topics.extend((0..WILL_TOPICS).map(|w| format!("will/{w}")));
    let mut filters = topics.clone();
    filters.extend((0..8).map(|a| format!("t/{a}/+")));
    filters.extend((0..4).map(|b| format!("t/+/{b}")));
    filters.extend(["t/#", "#", "+/+/+", "t/+/+", "will/+"].map(String::from));
    Universe::new(topics, publish_topics, filters)
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub missing: Vec<Missing>,
    /// Checks that could not run (the core does not expose what they need yet).
    pub unchecked: Vec<&'static str>,
    pub runtime: RuntimeStats,
    pub model: ModelStats,
    pub dropped: Option<u64>,
    pub quiesced: bool,
    pub connects: u64,
    pub crashes: u64,
    pub takeovers: u64,
    pub refused: u64,
}

pub struct Sim {
    pub config: SimConfig,
    pub rng: Rng,
    pub rt: Runtime,
    pub model: Model,
    pub clients: Vec<Client>,
    unchecked: Vec<&'static str>,
    turns: u64,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        Self::with_rng(config.clone(), Rng::from_seed(config.seed))
    }

    /// A run whose choices come from `rng` (a fuzz target passes a byte-driven one).
    pub fn with_rng(config: SimConfig, mut rng: Rng) -> Self {
        let mut rt =
            Runtime::new(config.broker.clone(), config.workers, config.wire, config.knobs.clone());
        rt.trace = std::env::var("SIM_TRACE")
            .ok()
            .map(|text| text.split(',').filter_map(|client| client.trim().parse().ok()).collect());
        let clients: Vec<Client> = (0..config.clients)
            .map(|index| {
                let clean = !rng.chance(config.persistent_per_mille);
                let temper = Temper {
                    stalls: rng.chance(100),
                    lazy_acks: rng.chance(100),
                    keepalive_secs: if rng.chance(200) { rng.between(5, 60) as u16 } else { 0 },
                    rude: rng.chance(30),
                    will: rng.chance(250),
                    retain_per_mille: config.retain_per_mille,
                };
                Client::new(index, clean, temper)
            })
            .collect();
        let persistent: Vec<bool> = clients.iter().map(|c| !c.clean).collect();
        let mut model = Model::new(universe(), &persistent);
        model.set_subscriptions_max(config.broker.subscriptions_per_session_max);
        Self { config, rng, rt, model, clients, unchecked: Vec::new(), turns: 0 }
    }

    /// The whole run: random steps, quiesce, final checks.
    pub fn run(mut self) -> Report {
        for _ in 0..self.config.steps {
            self.step();
            if self.rng.is_exhausted() {
                break;
            }
        }
        let quiesced = self.quiesce();
        let homes: Vec<u16> = self.clients.iter().map(|c| c.home.map_or(0, |w| w.0)).collect();
        let reach = &self.rt.reach;
        let missing = self.model.missing(&homes, |key| reach.get(key).copied().unwrap_or(0));
        if quiesced && self.config.mode == Mode::Generous {
            self.model.check_retained_received();
        }
        self.check_retained_replicas();
        self.finish();
        self.report(quiesced, missing)
    }

    /// One loop turn: the clock moves, then a few random events, then the actions are drained.
    pub fn step(&mut self) {
        let turn_start = self.model.now();
        let millis = self.rng.below(4);
        self.rt.advance(millis);
        let events = self.rng.between(1, 8);
        for _ in 0..events {
            let kind = self.rng.weighted(&[
                30,
                5 + self.rt.inbound.len() as u64,
                5 + self.rt.outbound.len() as u64,
                5 + self.rt.readable.len() as u64,
                if self.rt.links_empty() { 0 } else { 20 },
                1,
            ]);
            match kind {
                0 => {
                    self.sync_arrivals();
                    self.client_action()
                }
                1..=4 => self.network_event(kind),
                _ => self.rt.poke_stale_close(&mut self.rng),
            }
        }
        self.sync_arrivals();
        if self.rng.chance(5) {
            self.sweep_pings();
        }
        if self.rng.chance(20) {
            if let Some(conn) = self.rt.abandoned.pick(&mut self.rng) {
                self.rt.reset_abandoned(conn);
            }
        }
        self.end_turn(turn_start);
        self.check_bounds();
    }

    /// Ends the runtime's loop turn and tells the model what the turn did to wills: each
    /// published one was published at some point since `turn_start`.
    fn end_turn(&mut self, turn_start: u64) {
        self.rt.end_turn(&mut self.rng);
        self.sync_arrivals();
        for (conn, published) in std::mem::take(&mut self.rt.will_events) {
            let will = self.rt.conns[conn].will.as_ref().map(|(_, payload)| payload.clone());
            let Some((key, _)) = will.as_deref().and_then(decode_payload) else { continue };
            if published {
                self.model.will_published(key, turn_start);
            } else {
                self.model.will_discarded(key);
            }
        }
    }

    /// Passes the messages that reached workers, the QoS 2 publications and PUBLISHes the
    /// brokers received, and the requests and CONNECTs they processed, to the model, in the
    /// order they happened.
    fn sync_arrivals(&mut self) {
        for (key, worker) in self.rt.arrivals.drain(..) {
            self.model.arrived(key, worker.0);
        }
        for key in self.rt.receipts.publications.drain(..) {
            self.model.publication_received(key);
        }
        for key in self.rt.received.drain(..) {
            self.model.publish_received(key);
        }
        for processed in self.rt.requests.processed.drain(..) {
            match processed {
                Processed::Request { client, tickets } => {
                    self.model.request_processed(client, &tickets)
                }
                Processed::Connect { client } => self.model.connect_accepted(client),
            }
        }
    }

    fn network_event(&mut self, kind: usize) {
        self.sync_arrivals();
        match kind {
            1 => {
                if let Some(conn) = self.rt.inbound.pick(&mut self.rng) {
                    self.rt.deliver_inbound(conn, &mut self.rng);
                }
            }
            2 => {
                if let Some(conn) = self.rt.outbound.pick(&mut self.rng) {
                    self.rt.deliver_outbound(conn, &mut self.rng);
                }
            }
            3 => {
                if let Some(conn) = self.rt.readable.pick(&mut self.rng) {
                    self.client_reads(conn);
                }
            }
            _ => {
                self.rt.deliver_link(&mut self.rng);
            }
        }
    }

    fn client_reads(&mut self, conn: usize) {
        let index = self.rt.conns[conn].client;
        let client = &mut self.clients[index];
        if client.conn != Some(conn) {
            // An abandoned connection nobody reads any more.
            self.rt.client_finished(conn);
            return;
        }
        if client.reading {
            client.read(&mut self.rt, &mut self.model);
        }
    }

    fn sweep_pings(&mut self) {
        for client in &mut self.clients {
            client.ping_if_due(&mut self.rt);
        }
    }

    fn client_action(&mut self) {
        let index = self.rng.index(self.clients.len());
        let workers = self.rt.workers() as u64;
        let worker = WorkerId(self.rng.below(workers) as u16);
        let Sim { rng, rt, model, clients, .. } = self;
        let client = &mut clients[index];
        if client.phase == Phase::Offline || client.conn.is_none() {
            if rng.chance(600) {
                client.connect(rt, model, worker);
            }
            return;
        }
        let rude = u64::from(client.temper.rude);
        let choice = rng.weighted(&[40, 12, 5, 2, 2, 1, 3, 10, rude]);
        match choice {
            0 => client.publish(rt, model, rng),
            1 => {
                let filters = pick_filters(rng, &model.universe);
                client.subscribe(rt, model, filters);
            }
            2 => {
                let held = model.acked_filters(index);
                if !held.is_empty() {
                    let filter = held[rng.index(held.len())];
                    client.unsubscribe(rt, model, vec![filter]);
                }
            }
            3 => client.disconnect(rt, model),
            4 => client.crash(rt, model),
            5 => client.connect(rt, model, worker),
            6 => {
                if client.temper.stalls {
                    client.reading = !client.reading;
                }
            }
            7 => {
                let count = rng.between(1, 4) as usize;
                client.flush_acks(rt, count);
            }
            _ => client.send_second_connect(rt, model),
        }
    }

    /// Every client behaves and every persistent client comes back; the network runs until
    /// nothing moves. Returns whether everything settled.
    pub fn quiesce(&mut self) -> bool {
        let turn_start = self.model.now();
        while let Some(conn) = self.rt.abandoned.pick(&mut self.rng) {
            self.rt.reset_abandoned(conn);
        }
        self.end_turn(turn_start);
        for client in &mut self.clients {
            client.reading = true;
            client.temper.lazy_acks = false;
            client.flush_acks(&mut self.rt, usize::MAX);
        }
        for _round in 0..40 {
            let workers = self.rt.workers() as u64;
            for index in 0..self.clients.len() {
                let worker = WorkerId(self.rng.below(workers) as u16);
                let client = &mut self.clients[index];
                let wanted = !client.clean && client.ever_connected;
                if wanted && client.conn.is_none() {
                    client.connect(&mut self.rt, &mut self.model, worker);
                }
            }
            self.run_until_idle(200_000);
            let settled = self.clients.iter().all(|c| {
                let away = c.conn.is_none() && (c.clean || !c.ever_connected);
                away || c.is_settled()
            });
            if settled && self.is_idle() {
                self.check_nothing_pending();
                return true;
            }
            self.rt.advance(100);
            self.sweep_pings();
        }
        let stuck: Vec<String> = self
            .clients
            .iter()
            .filter(|c| (c.conn.is_some() || (!c.clean && c.ever_connected)) && !c.is_settled())
            .take(5)
            .map(|c| format!("{} phase {:?} outgoing {}", c.client_id, c.phase, c.outgoing_len()))
            .collect();
        self.model.violation(format!("the run did not quiesce; unsettled clients: {stuck:?}"));
        false
    }

    /// Once everything settled with every client connected and reading, no session may still
    /// hold a queued or in-flight message: it would wait for an event that never comes.
    fn check_nothing_pending(&mut self) {
        let mut stuck = Vec::new();
        for client in &self.clients {
            if client.conn.is_none() {
                continue;
            }
            for broker in &self.rt.brokers {
                let Some(load) = introspect::session_load(broker, &client.client_id) else {
                    continue;
                };
                if load.queued_messages > 0 || load.inflight > 0 {
                    stuck.push(format!("{}: {load:?}", client.client_id));
                }
            }
        }
        if !stuck.is_empty() {
            let count = stuck.len();
            stuck.truncate(3);
            self.model.violation(format!(
                "{count} connected, settled sessions still hold messages nothing will send \
                 (liveness): {stuck:?}"
            ));
        }
    }

    fn is_idle(&self) -> bool {
        self.rt.is_idle() && self.rt.readable.is_empty()
    }

    /// Network events only (no client actions), until nothing moves or `steps_max` turns.
    fn run_until_idle(&mut self, steps_max: u64) {
        for _ in 0..steps_max {
            if self.is_idle() {
                return;
            }
            let turn_start = self.model.now();
            self.rt.advance(self.rng.below(2));
            for _ in 0..self.rng.between(1, 8) {
                let kind = self.rng.weighted(&[
                    1 + self.rt.inbound.len() as u64,
                    1 + self.rt.outbound.len() as u64,
                    1 + self.rt.readable.len() as u64,
                    if self.rt.links_empty() { 0 } else { 20 },
                ]);
                self.network_event(kind + 1);
            }
            if self.rng.chance(5) {
                self.sweep_pings();
            }
            self.end_turn(turn_start);
            self.check_bounds();
        }
    }

    /// Bounds visible from outside the broker: the client-side count of unacknowledged
    /// deliveries (each is in flight at the broker) against `max_inflight_messages`; and, where
    /// the core exposes them, the session queues.
    /// One random client every turn, and every client every few hundred turns.
    fn check_bounds(&mut self) {
        self.turns += 1;
        if self.turns % 400 == 0 {
            for index in 0..self.clients.len() {
                self.check_client_bounds(index);
            }
        } else {
            let index = self.rng.index(self.clients.len());
            self.check_client_bounds(index);
        }
    }

    fn check_client_bounds(&mut self, index: usize) {
        let inflight_max = usize::from(self.config.broker.max_inflight_messages);
        let client = &self.clients[index];
        if client.inflight_seen() > inflight_max {
            let text = format!(
                "{} holds {} unacknowledged QoS 1/2 deliveries, above max_inflight_messages {}",
                client.client_id,
                client.inflight_seen(),
                inflight_max
            );
            self.model.violation(text);
        }
        let config = &self.config.broker;
        let mut homes = 0;
        for broker in &self.rt.brokers {
            let Some(load) = introspect::session_load(broker, &client.client_id) else { continue };
            homes += 1;
            if load.inflight > inflight_max
                || load.queued_messages > config.max_queued_messages
                || load.queued_bytes > config.max_queued_bytes
                || load.filters.len() > config.subscriptions_per_session_max
            {
                let text = format!("{} session above a bound: {load:?}", client.client_id);
                self.model.violation(text);
            }
        }
        if homes > 1 {
            let text = format!("{} has a session on {homes} workers", client.client_id);
            self.model.violation(text);
        }
    }

    /// Clean clients disconnect (or crash), persistent ones disconnect, crash or stay; then the
    /// brokers must hold exactly what the persistent sessions explain.
    fn finish(&mut self) {
        for index in 0..self.clients.len() {
            let client = &mut self.clients[index];
            if client.conn.is_none() {
                continue;
            }
            let roll = self.rng.below(3);
            if client.clean || roll == 0 {
                if roll == 1 {
                    client.crash(&mut self.rt, &mut self.model);
                } else {
                    client.disconnect(&mut self.rt, &mut self.model);
                }
            } else if roll == 1 {
                client.crash(&mut self.rt, &mut self.model);
            }
        }
        self.run_until_idle(200_000);
        self.check_left_behind();
    }

    /// Every worker's replica holds the same retained message for each topic (the owner
    /// serialises each topic's updates). Call when the links are empty.
    fn check_retained_replicas(&mut self) {
        if !self.rt.links_empty() {
            return;
        }
        for topic_text in self.model.universe.topics.clone() {
            let topic = ringmq::protocol::TopicName::try_from(topic_text.as_str())
                .expect("the universe holds valid topic names");
            let payloads: Vec<Option<bytes::Bytes>> = self
                .rt
                .brokers
                .iter()
                .map(|broker| broker.retained(&topic).map(|message| message.payload.clone()))
                .collect();
            if payloads.windows(2).any(|pair| pair[0] != pair[1]) {
                let text = format!("retained replicas differ on {topic_text}: {payloads:?}");
                self.model.violation(text);
            }
        }
    }

    fn check_left_behind(&mut self) {
        let connected = self.clients.iter().filter(|c| c.conn.is_some()).count();
        let open = self.rt.conns.iter().filter(|c| c.state == ConnState::Open).count();
        if open != connected {
            let strays: Vec<String> = (0..self.rt.conns.len())
                .filter(|&c| self.rt.conns[c].state == ConnState::Open)
                .filter(|&c| self.clients[self.rt.conns[c].client].conn != Some(c))
                .take(5)
                .map(|c| format!("conn {c} of client {}", self.rt.conns[c].client))
                .collect();
            let text = format!(
                "{open} connections are open at the brokers after the end, but only {connected} \
                 clients are still connected; left open: {strays:?}"
            );
            self.model.violation(text);
        }
        let sessions = self.clients.iter().filter(|c| !c.clean && c.had_session).count();
        let subscriptions: usize = self
            .clients
            .iter()
            .filter(|c| !c.clean && c.had_session)
            .map(|c| self.model.held_filters(c.index).len())
            .sum();
        let expected = introspect::Counts { connections: connected, sessions, subscriptions };
        let mut total = introspect::Counts::default();
        for broker in &self.rt.brokers {
            let Some(counts) = introspect::counts(broker) else {
                self.unchecked.push("no state left behind (broker counts)");
                return;
            };
            total.connections += counts.connections;
            total.sessions += counts.sessions;
            total.subscriptions += counts.subscriptions;
        }
        if total != expected {
            let text = format!(
                "brokers hold {total:?} at the end; the clients explain {expected:?}; sessions \
                 that differ: {:?}",
                self.sessions_that_differ()
            );
            self.model.violation(text);
        }
    }

    /// Clients whose session (by its subscription count, or its very existence) is not what
    /// the model says, for the failure message.
    fn sessions_that_differ(&self) -> Vec<String> {
        let mut differ = Vec::new();
        for client in &self.clients {
            let found: Vec<introspect::SessionLoad> = (self.rt.brokers.iter())
                .filter_map(|broker| introspect::session_load(broker, &client.client_id))
                .collect();
            let universe = &self.model.universe;
            let expected = (!client.clean && client.had_session).then(|| {
                let held = self.model.held_filters(client.index).into_iter();
                let mut names: Vec<String> =
                    held.map(|f| universe.filters[f as usize].clone()).collect();
                names.sort();
                names
            });
            let actual = found.first().map(|load| load.filters.clone());
            if found.len() > 1 || expected != actual {
                differ.push(format!(
                    "{}: model {expected:?} subscriptions, brokers {actual:?} ({} sessions)",
                    client.client_id,
                    found.len()
                ));
            }
        }
        differ.truncate(5);
        differ
    }

    fn report(mut self, quiesced: bool, missing: Vec<Missing>) -> Report {
        let mut violations = std::mem::take(&mut self.rt.violations);
        violations.append(&mut self.model.violations);
        let dropped: Option<u64> =
            self.rt.brokers.iter().map(introspect::messages_dropped).sum::<Option<u64>>();
        if dropped.is_none() {
            self.unchecked.push("drop counters");
        }
        let sum = |f: fn(&Client) -> u64| self.clients.iter().map(f).sum::<u64>();
        Report {
            violations,
            missing,
            unchecked: self.unchecked.clone(),
            runtime: self.rt.stats.clone(),
            model: self.model.stats.clone(),
            dropped,
            quiesced,
            connects: sum(|c| c.stats.connects),
            crashes: sum(|c| c.stats.crashes),
            takeovers: sum(|c| c.stats.takeovers),
            refused: sum(|c| c.stats.refused),
        }
    }
}

/// One to three filters, mostly exact topics, sometimes a wildcard, each at a random QoS.
fn pick_filters(rng: &mut Rng, universe: &Universe) -> Vec<(u16, QoS)> {
    let exact = universe.topics.len();
    let count = rng.between(1, 3);
    let mut filters: Vec<(u16, QoS)> = Vec::new();
    for _ in 0..count {
        let filter = if rng.chance(850) {
            rng.index(exact)
        } else {
            exact + rng.index(universe.filters.len() - exact)
        } as u16;
        let qos = QoS::from_u8(rng.below(3) as u8).expect("0..3 are QoS values");
        if !filters.iter().any(|(f, _)| *f == filter) {
            filters.push((filter, qos));
        }
    }
    filters
}
