//! What each session's subscriptions are at the broker: the SUBSCRIBEs and UNSUBSCRIBEs the
//! brokers processed, applied in the order they processed them.
//!
//! A client's requests need not reach the broker in the order it sent them. One written on a
//! connection the client then gave up unclosed can arrive after everything it sent on its next
//! connection: the old connection's CONNECT takes the session over [MQTT-3.1.4-2] and its
//! requests then apply to that same session [MQTT-3.1.2-4] (the `sim` fuzz target's finding
//! `sim-late-subscribe-ff9f2a24`: a SUBSCRIBE arriving after a later UNSUBSCRIBE of the same
//! filter leaves it subscribed). So the last request a broker processed decides a filter,
//! whether or not the client ever read its answer. The runtime reports each request a broker
//! processed — only those: a connection the broker closed earlier in the same turn (a
//! takeover, a second CONNECT, a bound) has its later packets ignored — and each CONNECT a
//! broker accepted (`runtime/requests.rs`).
//!
//! Invariant: a subscriber's `processed.held` is the filter set of the broker's session for
//! that client, given ringmq's grant rule (`src/broker/subscribe.rs`): the filters of a
//! SUBSCRIBE in order, each granted at the requested QoS, or 0x80 when it is new and the
//! session already holds `subscriptions_per_session_max` filters; UNSUBSCRIBE removes; a clean
//! session starts empty at each accepted CONNECT [MQTT-3.1.2-6], a persistent one is created
//! empty once and kept. Every SUBACK a client reads is checked against the decision taken here
//! when the broker processed its SUBSCRIBE, so the rule is verified wherever it can be seen.

use std::collections::BTreeMap;

use ringmq::protocol::QoS;

use super::Model;

/// One filter of a SUBSCRIBE (`qos` is the requested QoS) or of an UNSUBSCRIBE (`None`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    pub filter: u16,
    pub qos: Option<QoS>,
}

/// One client's requests as the brokers processed them.
#[derive(Clone, Debug, Default)]
pub(super) struct Processed {
    /// Requests sent and not processed (yet), by ticket.
    pub sent: BTreeMap<u64, Request>,
    /// The filters the broker's session holds, with their QoS.
    pub held: BTreeMap<u16, QoS>,
    /// Per filter, the ticket of the last request for it a broker processed.
    pub last: BTreeMap<u16, u64>,
    /// Per SUBSCRIBE ticket processed and not yet answered to the client: the code decided.
    pub decided: BTreeMap<u64, Option<QoS>>,
}

impl Model {
    /// `client` sent `request` with the ticket `ticket`.
    pub(super) fn request_sent(&mut self, client: usize, ticket: u64, request: Request) {
        self.subscribers[client].processed.sent.insert(ticket, request);
    }

    /// A broker processed, in this order, the filters of one of `client`'s SUBSCRIBEs or
    /// UNSUBSCRIBEs, whose tickets are `tickets` (the runtime reports it).
    pub fn request_processed(&mut self, client: usize, tickets: &[u64]) {
        let at = self.tick();
        let subscriptions_max = self.subscriptions_max;
        let subscriber = &mut self.subscribers[client];
        let mut unknown = Vec::new();
        for &ticket in tickets {
            let Some(request) = subscriber.processed.sent.remove(&ticket) else {
                unknown.push(ticket);
                continue;
            };
            let filter = request.filter;
            if subscriber.latest_request.get(&filter) != Some(&ticket) {
                // A later request for this filter was sent before this one was processed.
                self.stats.requests_processed_late += 1;
            }
            // The interval the model was sure of ends: this request comes after the one whose
            // SUBACK opened it.
            if let Some(index) = subscriber.open.remove(&filter) {
                subscriber.intervals[index].until = at;
            }
            let processed = &mut subscriber.processed;
            processed.last.insert(filter, ticket);
            let Some(qos) = request.qos else {
                processed.held.remove(&filter);
                continue;
            };
            let room =
                processed.held.contains_key(&filter) || processed.held.len() < subscriptions_max;
            let granted = room.then_some(qos);
            if room {
                processed.held.insert(filter, qos);
            }
            processed.decided.insert(ticket, granted);
        }
        for ticket in unknown {
            self.violation(format!(
                "client {client}: a broker processed request ticket {ticket}, which was never \
                 sent or was processed twice"
            ));
        }
    }

    /// A broker accepted a CONNECT of `client`'s: a clean session starts empty [MQTT-3.1.2-6]; a
    /// persistent one is resumed, or created empty the first time [MQTT-3.1.2-4].
    pub fn connect_accepted(&mut self, client: usize) {
        let subscriber = &mut self.subscribers[client];
        if !subscriber.persistent {
            subscriber.processed.held.clear();
        }
    }

    /// Checks the SUBACK code `granted` for the SUBSCRIBE `ticket` of `filter` against the
    /// decision taken when a broker processed it. Returns whether that request is the last one
    /// for the filter a broker processed (only then may its SUBACK open a subscription).
    pub(super) fn check_suback(
        &mut self,
        client: usize,
        filter: u16,
        granted: Option<QoS>,
        ticket: u64,
    ) -> bool {
        let processed = &mut self.subscribers[client].processed;
        let decided = processed.decided.remove(&ticket);
        let last = processed.last.get(&filter) == Some(&ticket);
        match decided {
            None => self.violation(format!(
                "client {client}: SUBACK for filter {filter} of a SUBSCRIBE no broker was \
                 reported to process"
            )),
            Some(decided) if decided != granted => self.violation(format!(
                "client {client}: SUBACK code {granted:?} for filter {filter}; the model decided \
                 {decided:?} when the broker processed it (requested QoS granted, 0x80 for a new \
                 filter once the session holds subscriptions_per_session_max = {})",
                self.subscriptions_max
            )),
            Some(_) => {}
        }
        last
    }

    /// The filters the broker's session for `client` holds, from the requests the brokers
    /// processed, in processing order.
    pub fn held_filters(&self, client: usize) -> Vec<u16> {
        self.subscribers[client].processed.held.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Model, Universe};
    use super::*;

    fn model(subscriptions_max: usize) -> Model {
        let topics = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let universe = Universe::new(topics.clone(), topics.len(), topics);
        let mut model = Model::new(universe, &[true, false]);
        model.set_subscriptions_max(subscriptions_max);
        model
    }

    /// A SUBSCRIBE sent before an UNSUBSCRIBE of the same filter but processed after it (it
    /// came late, on a connection the client had given up) leaves the filter held, though
    /// its SUBACK is never read: the session is the same [MQTT-3.1.2-4].
    #[test]
    fn the_request_processed_last_decides_a_filter_mqtt_3_1_2_4() {
        let mut model = model(10);
        let late = model.subscribe_sent(0, 0, QoS::AtLeastOnce);
        let again = model.subscribe_sent(0, 0, QoS::AtLeastOnce);
        model.request_processed(0, &[again]);
        model.subscribe_acked(0, 0, Some(QoS::AtLeastOnce), again);
        assert_eq!(model.acked_filters(0), vec![0]);
        let unsubscribe = model.unsubscribe_sent(0, 0);
        model.request_processed(0, &[unsubscribe]);
        assert_eq!(model.held_filters(0), Vec::<u16>::new());
        model.request_processed(0, &[late]);
        assert_eq!(model.held_filters(0), vec![0]);
        assert_eq!(model.acked_filters(0), Vec::<u16>::new(), "no SUBACK read: nothing expected");
        assert_eq!(model.stats.requests_processed_late, 1);
        assert!(model.violations.is_empty(), "{:?}", model.violations);
    }

    /// A late UNSUBSCRIBE ends the interval a later SUBSCRIBE's SUBACK opened: from then on no
    /// delivery is expected.
    #[test]
    fn a_late_unsubscribe_ends_what_the_model_expects() {
        let mut model = model(10);
        let late = model.unsubscribe_sent(0, 1);
        let subscribe = model.subscribe_sent(0, 1, QoS::ExactlyOnce);
        model.request_processed(0, &[subscribe]);
        model.subscribe_acked(0, 1, Some(QoS::ExactlyOnce), subscribe);
        assert_eq!(model.acked_filters(0), vec![1]);
        model.request_processed(0, &[late]);
        assert_eq!(model.acked_filters(0), Vec::<u16>::new());
        assert_eq!(model.held_filters(0), Vec::<u16>::new());
    }

    /// A SUBACK read for a SUBSCRIBE processed before another request of the same filter
    /// opens nothing.
    #[test]
    fn a_suback_overtaken_at_the_broker_opens_nothing() {
        let mut model = model(10);
        let subscribe = model.subscribe_sent(0, 2, QoS::AtLeastOnce);
        let late = model.subscribe_sent(0, 2, QoS::AtMostOnce);
        model.request_processed(0, &[subscribe]);
        model.request_processed(0, &[late]);
        model.subscribe_acked(0, 2, Some(QoS::AtLeastOnce), subscribe);
        assert_eq!(model.acked_filters(0), Vec::<u16>::new());
        assert_eq!(model.held_filters(0), vec![2]);
    }

    /// The grant rule, in processing order: a new filter past the session's bound gets 0x80,
    /// a held one is replaced; a SUBACK that differs from the decision is a violation.
    #[test]
    fn the_grant_decision_follows_processing_order_and_is_checked() {
        let mut model = model(2);
        let a = model.subscribe_sent(0, 0, QoS::AtLeastOnce);
        let b = model.subscribe_sent(0, 1, QoS::AtLeastOnce);
        let c = model.subscribe_sent(0, 2, QoS::AtLeastOnce);
        let a_again = model.subscribe_sent(0, 0, QoS::ExactlyOnce);
        model.request_processed(0, &[a, b, c, a_again]);
        assert_eq!(model.held_filters(0), vec![0, 1]);
        model.subscribe_acked(0, 2, None, c);
        model.subscribe_acked(0, 0, Some(QoS::ExactlyOnce), a_again);
        assert!(model.violations.is_empty(), "{:?}", model.violations);
        model.subscribe_acked(0, 1, None, b);
        assert_eq!(model.violations.len(), 1, "0x80 where the rule grants: {:?}", model.violations);
        let never = model.subscribe_sent(0, 2, QoS::AtLeastOnce);
        model.subscribe_acked(0, 2, Some(QoS::AtLeastOnce), never);
        assert_eq!(model.violations.len(), 2, "a SUBACK for a SUBSCRIBE never processed");
    }

    /// A clean session starts empty at each accepted CONNECT [MQTT-3.1.2-6]; a persistent one
    /// keeps its filters [MQTT-3.1.2-4].
    #[test]
    fn an_accepted_connect_empties_only_a_clean_session_mqtt_3_1_2_6() {
        let mut model = model(10);
        for client in [0, 1] {
            let ticket = model.subscribe_sent(client, 0, QoS::AtLeastOnce);
            model.request_processed(client, &[ticket]);
            model.connect_accepted(client);
        }
        assert_eq!(model.held_filters(0), vec![0]);
        assert_eq!(model.held_filters(1), Vec::<u16>::new());
    }
}
