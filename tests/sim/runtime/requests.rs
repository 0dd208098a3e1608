//! Which SUBSCRIBEs and UNSUBSCRIBEs the brokers processed, and which CONNECTs they accepted,
//! in the order they did: what the model's session filters follow (`model/requests.rs`).
//!
//! A client writes a request with the model's tickets for its filters; the runtime keeps them
//! per connection in write order, and the k-th SUBSCRIBE or UNSUBSCRIBE fed on a connection is
//! the k-th written (a connection's bytes are never reordered). A request counts as processed
//! only if its connection is open at the broker with its CONNECT accepted when it is fed
//! (`Broker::is_connected`): the broker ignores packets fed to a connection it closed earlier
//! in the same turn (a takeover, a second CONNECT [MQTT-3.1.0-2], a bound), and the runtime
//! only hears of that close when it drains the worker's actions.
//!
//! Invariant: `written[conn]` holds, in write order, the requests written on `conn` and not
//! yet fed; `processed` the events the driver has not yet passed to the model, in order.

use std::collections::{BTreeMap, VecDeque};

use ringmq::protocol::Packet;

use super::{ConnIndex, Runtime};

/// Something a broker did with a client's session, for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// It handled a SUBSCRIBE or UNSUBSCRIBE; the tickets of its filters, in order.
    Request { client: usize, tickets: Vec<u64> },
    /// It accepted a CONNECT (the session is now bound to that connection).
    Connect { client: usize },
}

#[derive(Debug, Default)]
pub struct Requests {
    /// Per connection: (packet id, tickets) of each request written and not yet fed.
    written: BTreeMap<ConnIndex, VecDeque<(u16, Vec<u64>)>>,
    /// Events the driver has not yet passed to the model.
    pub processed: Vec<Processed>,
}

impl Runtime {
    /// The client writes the SUBSCRIBE or UNSUBSCRIBE `packet`, whose filters carry the model's
    /// `tickets` (in the packet's order).
    pub fn client_write_request(&mut self, conn: ConnIndex, packet: Packet, tickets: Vec<u64>) {
        let id = request_id(&packet).expect("only SUBSCRIBE and UNSUBSCRIBE are requests");
        let c = &self.conns[conn];
        if !(c.client_eof || c.client_gone) {
            self.requests.written.entry(conn).or_default().push_back((id, tickets));
        }
        self.client_write(conn, packet);
    }

    /// `packet` is about to be fed on `conn`: a request is processed if the broker holds the
    /// connection with its CONNECT accepted.
    pub(super) fn note_request_fed(&mut self, conn: ConnIndex, packet: &Packet) {
        let Some(id) = request_id(packet) else { return };
        let front = self.requests.written.get_mut(&conn).and_then(VecDeque::pop_front);
        let Some((written_id, tickets)) = front else {
            return self.violation(format!("conn {conn}: fed request {id} was never written"));
        };
        if written_id != id {
            return self.violation(format!(
                "conn {conn}: fed request {id}, but the next one written is {written_id}"
            ));
        }
        let c = &self.conns[conn];
        if self.brokers[c.worker.index()].is_connected(c.id) {
            let client = c.client;
            self.requests.processed.push(Processed::Request { client, tickets });
        } else {
            self.stats.requests_ignored += 1;
            self.trace_conn(conn, || format!("request {written_id} ignored: closed at the broker"));
        }
    }

    /// A CONNECT was just handled on `conn`: if the broker now holds the connection, it
    /// accepted it here (not refused, not handed off, not a second CONNECT).
    pub(super) fn note_connect_handled(&mut self, conn: ConnIndex) {
        let c = &self.conns[conn];
        if self.brokers[c.worker.index()].is_connected(c.id) {
            self.requests.processed.push(Processed::Connect { client: c.client });
        }
    }
}

fn request_id(packet: &Packet) -> Option<u16> {
    match packet {
        Packet::Subscribe(subscribe) => Some(subscribe.packet_id.get()),
        Packet::Unsubscribe(unsubscribe) => Some(unsubscribe.packet_id.get()),
        _ => None,
    }
}
