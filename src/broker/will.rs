//! The last will [MQTT-3.1.2-8..17]: stored with the connection at CONNECT, published when the
//! connection ends for any reason but DISCONNECT — a network failure, a protocol error, a
//! keepalive expiry, a slow-consumer close, a takeover or shutdown — and then forgotten
//! [MQTT-3.1.2-10]. DISCONNECT discards it unpublished [MQTT-3.14.4-3].
//!
//! It is published as if its client had published it: with its QoS, and retained when its
//! retain flag is set [MQTT-3.1.2-16] [MQTT-3.1.2-17], through the same routing as any PUBLISH
//! (local subscribers, interested workers, the retained store's owner).

use super::{Broker, Message, Millis};
use crate::protocol::LastWill;

impl Broker {
    pub(super) fn publish_will(&mut self, will: LastWill, now: Millis) {
        self.stats.wills_published += 1;
        let message = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
        };
        self.route_publish(message, now);
    }
}
