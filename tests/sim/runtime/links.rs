//! The links between workers: `Action::Remote` and `Action::Handoff` travel here, FIFO per
//! ordered pair of workers, each held back a random number of loop turns (never reordered,
//! unless a [`Fault`] is injected on purpose), and what each worker has been told about the
//! others' interest is tracked so a lost message can be told from an interest window.

use ringmq::broker::{ConnId, RemoteMsg, WorkerId};
use ringmq::protocol::{Connect, Packet};
use std::collections::VecDeque;

use super::super::model::{decode_payload, filter_matches};
use super::super::rng::Rng;
use super::{ConnIndex, ConnState, Runtime};

pub(super) enum LinkItem {
    Remote(RemoteMsg),
    Handoff { conn: ConnIndex, connect: Box<Connect> },
}

#[derive(Default)]
pub(super) struct Link {
    /// Items with the step from which they may be delivered; non-decreasing, so FIFO.
    pub(super) queue: VecDeque<(u64, LinkItem)>,
}

/// Runtime bugs the simulation can inject (for its own self-tests; never in a real run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Each acts on cross-worker `RemoteMsg::Publish`es only.
pub enum Fault {
    /// Every `n`th `RemoteMsg::Publish` vanishes on its link.
    Lose(u64),
    /// Every `n`th `RemoteMsg::Publish` is delivered twice.
    Duplicate(u64),
    /// Every `n`th `RemoteMsg::Publish` overtakes the last one queued on its link from the
    /// same publisher to the same topic.
    Reorder(u64),
}

impl Runtime {
    /// Delivers a random number of ready items from one random link with a ready head.
    pub fn deliver_link(&mut self, rng: &mut Rng) -> bool {
        let ready: Vec<usize> = (0..self.links.len())
            .filter(|&l| self.links[l].queue.front().is_some_and(|(at, _)| *at <= self.step))
            .collect();
        if ready.is_empty() {
            return false;
        }
        let link = ready[rng.index(ready.len())];
        let count = rng.between(1, 8);
        for _ in 0..count {
            let Some((at, _)) = self.links[link].queue.front() else { break };
            if *at > self.step {
                break;
            }
            let (_, item) = self.links[link].queue.pop_front().expect("front was just seen");
            self.deliver_link_item(link, item);
        }
        true
    }

    /// Delivers every queued link item regardless of delay (quiescing).
    pub fn flush_links(&mut self) -> bool {
        let mut any = false;
        for link in 0..self.links.len() {
            while let Some((_, item)) = self.links[link].queue.pop_front() {
                self.deliver_link_item(link, item);
                any = true;
            }
        }
        any
    }

    pub fn links_empty(&self) -> bool {
        self.links.iter().all(|l| l.queue.is_empty())
    }

    pub(super) fn deliver_link_item(&mut self, link: usize, item: LinkItem) {
        let workers = self.workers();
        let (from, to) = (WorkerId((link / workers) as u16), WorkerId((link % workers) as u16));
        self.touched[to.index()] = true;
        match item {
            LinkItem::Remote(msg) => {
                if let RemoteMsg::Publish(message) = &msg {
                    if let Some((key, _)) = decode_payload(&message.payload) {
                        let client = key.publisher as usize;
                        self.trace(client, || format!("w{} -> w{}: {key:?}", from.0, to.0));
                        self.arrivals.push((key, to));
                    }
                }
                if let RemoteMsg::Interest { filter, interested } = &msg {
                    let known = &mut self.interest[to.index()][from.index()];
                    if *interested {
                        known.insert(filter.as_str().to_string());
                    } else {
                        known.remove(filter.as_str());
                    }
                }
                self.brokers[to.index()].handle_remote(from, msg, self.now)
            }
            LinkItem::Handoff { conn, connect } => self.land_handoff(conn, to, connect),
        }
    }

    fn land_handoff(&mut self, conn: ConnIndex, to: WorkerId, connect: Box<Connect>) {
        let id = self.slots[to.index()].allocate();
        self.by_id[to.index()].insert(id, conn);
        let c = &mut self.conns[conn];
        assert_eq!(c.state, ConnState::InHandoff);
        c.worker = to;
        c.id = id;
        c.state = ConnState::Open;
        c.connect_fed = true;
        c.fed_this_turn = true;
        let gone = c.client_gone;
        self.fed.push(conn);
        self.trace_conn(conn, || "handoff landed: open + CONNECT".into());
        let broker = &mut self.brokers[to.index()];
        broker.handle_open(id, self.now);
        broker.handle_packet(id, Packet::Connect(connect), self.now);
        self.note_connect_handled(conn);
        if gone {
            // The client went away while its socket was moving: the new ring sees EOF.
            self.conns[conn].state = ConnState::ClosedByClient;
            self.brokers[to.index()].handle_closed(id, self.now);
            self.closed_this_turn.push((to, id));
            self.forget_id(to, id);
        } else if self.conns[conn].wants_inbound() {
            self.inbound.insert(conn);
        }
    }

    /// Records which workers `worker` knows to want a publish to `topic` right now.
    pub fn note_reach(&mut self, worker: WorkerId, topic: &str, payload: &[u8]) {
        let Some((key, _)) = decode_payload(payload) else { return };
        let mut mask = 1u32 << worker.0;
        for (from, filters) in self.interest[worker.index()].iter().enumerate() {
            if filters.iter().any(|filter| filter_matches(filter, topic)) {
                mask |= 1 << from;
            }
        }
        *self.reach.entry(key).or_default() |= mask;
        self.arrivals.push((key, worker));
    }

    pub(super) fn on_remote(
        &mut self,
        from: WorkerId,
        to: WorkerId,
        msg: RemoteMsg,
        rng: &mut Rng,
    ) {
        if to == from || to.index() >= self.workers() {
            self.violation(format!("worker {} sent a Remote to worker {}", from.0, to.0));
            return;
        }
        self.stats.remote_messages += 1;
        let RemoteMsg::Publish(message) = &msg else {
            self.enqueue(from, to, LinkItem::Remote(msg), rng);
            return;
        };
        self.stats.remote_publishes += 1;
        let nth = |n: u64| self.stats.remote_publishes % n == 0;
        match self.knobs.fault {
            Some(Fault::Lose(n)) if nth(n) => self.stats.faults_applied += 1,
            Some(Fault::Duplicate(n)) if nth(n) => {
                let copy = RemoteMsg::Publish(message.clone());
                self.stats.faults_applied += 1;
                self.enqueue(from, to, LinkItem::Remote(msg), rng);
                self.enqueue(from, to, LinkItem::Remote(copy), rng);
            }
            Some(Fault::Reorder(n)) if nth(n) => {
                let key = decode_payload(&message.payload).map(|(key, _)| key);
                self.enqueue(from, to, LinkItem::Remote(msg), rng);
                let link = &mut self.links[from.index() * self.brokers.len() + to.index()];
                let same = |item: &LinkItem| match (item, key) {
                    (LinkItem::Remote(RemoteMsg::Publish(m)), Some(key)) => {
                        decode_payload(&m.payload).is_some_and(|(k, _)| {
                            k.publisher == key.publisher && k.topic == key.topic
                        })
                    }
                    _ => false,
                };
                let last = link.queue.len() - 1;
                if let Some(earlier) = (0..last).rev().find(|&i| same(&link.queue[i].1)) {
                    let moved = link.queue.remove(last).expect("the item was just queued");
                    let ready = link.queue[earlier].0;
                    link.queue.insert(earlier, (ready, moved.1));
                    self.stats.faults_applied += 1;
                }
            }
            _ => self.enqueue(from, to, LinkItem::Remote(msg), rng),
        }
    }

    pub(super) fn on_handoff(
        &mut self,
        from: WorkerId,
        id: ConnId,
        to: WorkerId,
        connect: Box<Connect>,
        rng: &mut Rng,
    ) {
        let Some(conn) = self.known(from, id, "Handoff") else { return };
        self.trace_conn(conn, || format!("Handoff to w{}", to.0));
        if to == from || to.index() >= self.workers() {
            self.violation(format!("worker {} handed {id:?} off to worker {}", from.0, to.0));
            return;
        }
        self.stats.handoffs += 1;
        self.conns[conn].state = ConnState::InHandoff;
        self.forget_id(from, id);
        // Output taken before the handoff (there should be none: CONNACK comes from `to`).
        if self.conns[conn].taken_bytes > 0 {
            self.violation(format!("{id:?} was handed off with output already taken"));
        }
        self.enqueue(from, to, LinkItem::Handoff { conn, connect }, rng);
    }

    fn enqueue(&mut self, from: WorkerId, to: WorkerId, item: LinkItem, rng: &mut Rng) {
        let link = &mut self.links[from.index() * self.brokers.len() + to.index()];
        let delay = rng.below(self.knobs.link_delay_steps_max + 1);
        let last = link.queue.back().map_or(0, |(at, _)| *at);
        link.queue.push_back(((self.step + delay).max(last), item));
    }
}
