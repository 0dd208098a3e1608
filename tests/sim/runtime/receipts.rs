//! Which QoS 2 PUBLISHes a broker must take as new publications, from what the runtime fed it
//! and what it wrote back.
//!
//! A QoS 2 receiver keeps a PUBLISH's packet id until PUBREL; after it has sent PUBCOMP it
//! "MUST treat any subsequent PUBLISH packet that contains that Packet Identifier as being a
//! new publication" [MQTT-4.3.3-2]. So a message reaches a subscriber once per publication,
//! and a client can cause a second publication of one message without breaking any rule: it
//! writes the PUBLISH on a connection, gives that connection up without closing it, sends the
//! PUBLISH again (DUP=1) on a new connection [MQTT-4.4.0-1] and completes the flow there; the
//! old connection's bytes, still on their way, then reach the broker after the PUBCOMP, and
//! the id is free again (`sim-qos2-duplicate-c8ac53a1`, found by the `sim` fuzz target).
//!
//! Invariant: `held` holds, per (client, packet id), the message of the last QoS 2 PUBLISH fed
//! with that id until the broker's PUBCOMP for that id is taken from one of the client's
//! connections, which is when the broker has certainly released it. A PUBLISH fed while its
//! id is held for the same message is a retransmission; any other is a new publication.

use std::collections::BTreeMap;

use bytes::Bytes;
use ringmq::protocol::{Publish, QoS};

use super::super::model::{decode_payload, MessageKey};
use super::{ConnIndex, Runtime};

/// PUBCOMP's fixed header byte: type 7, no flags.
const PUBCOMP_HEADER: u8 = 0x70;

#[derive(Debug, Default)]
pub struct Qos2Receipts {
    /// (client, packet id) -> the message the broker holds that id for.
    held: BTreeMap<(usize, u16), MessageKey>,
    /// New publications the driver has not yet passed to the model.
    pub publications: Vec<MessageKey>,
    /// Every message ever published, to tell a first publication from a later one.
    published: BTreeMap<MessageKey, u32>,
}

impl Runtime {
    /// `publish` is about to be fed on `conn`: a QoS 2 one is a new publication unless the
    /// broker still holds its packet id for the same message.
    pub(super) fn note_qos2_publish(&mut self, conn: ConnIndex, publish: &Publish) {
        let Some(id) = publish.packet_id.filter(|_| publish.qos == QoS::ExactlyOnce) else {
            return;
        };
        let Some((key, _)) = decode_payload(&publish.payload) else { return };
        let client = self.conns[conn].client;
        let receipts = &mut self.receipts;
        if receipts.held.insert((client, id.get()), key) == Some(key) {
            return;
        }
        let count = receipts.published.entry(key).or_insert(0);
        *count += 1;
        if *count > 1 {
            self.stats.qos2_republications += 1;
            self.trace_conn(conn, || {
                format!("{key:?} is a new publication again (id {})", id.get())
            });
        }
        self.receipts.publications.push(key);
    }

    /// Output just taken from `conn`: every PUBCOMP in it released its packet id.
    pub(super) fn note_pubcomps(&mut self, conn: ConnIndex, segments: &[Bytes]) {
        let client = self.conns[conn].client;
        for id in pubcomp_ids(segments) {
            self.receipts.held.remove(&(client, id));
        }
    }
}

/// The packet ids of the PUBCOMPs in one take of output. A take holds whole packets (it
/// empties the connection's output buffer, which only ever gets whole packets); a packet's
/// bytes may span segments (a PUBLISH's payload is a segment of its own).
fn pubcomp_ids(segments: &[Bytes]) -> Vec<u16> {
    let mut cursor = Cursor { segments, index: 0, offset: 0 };
    let mut ids = Vec::new();
    while let Some(header) = cursor.byte() {
        let mut remaining = 0usize;
        for shift in [0, 7, 14, 21] {
            let Some(byte) = cursor.byte() else { return ids };
            remaining |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if header == PUBCOMP_HEADER && remaining == 2 {
            let (Some(high), Some(low)) = (cursor.byte(), cursor.byte()) else { return ids };
            ids.push(u16::from_be_bytes([high, low]));
        } else {
            cursor.skip(remaining);
        }
    }
    ids
}

/// Reads a list of segments as one byte stream.
struct Cursor<'a> {
    segments: &'a [Bytes],
    index: usize,
    offset: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        while let Some(segment) = self.segments.get(self.index) {
            if let Some(&byte) = segment.get(self.offset) {
                self.offset += 1;
                return Some(byte);
            }
            self.index += 1;
            self.offset = 0;
        }
        None
    }

    fn skip(&mut self, mut count: usize) {
        while let Some(segment) = self.segments.get(self.index) {
            let here = (segment.len() - self.offset).min(count);
            self.offset += here;
            count -= here;
            if count == 0 {
                return;
            }
            self.index += 1;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubcomp_ids_are_found_across_segments() {
        // PUBLISH (header + topic in one segment, payload in the next), PUBCOMP 258 split over
        // two segments, PUBACK 5, PUBCOMP 7.
        let segments = [
            Bytes::from_static(&[0x30, 0x05, 0x00, 0x01, b't']),
            Bytes::from_static(b"ab"),
            Bytes::from_static(&[0x70, 0x02, 0x01]),
            Bytes::from_static(&[0x02, 0x40, 0x02, 0x00, 0x05, 0x70, 0x02, 0x00, 0x07]),
        ];
        assert_eq!(pubcomp_ids(&segments), vec![258, 7]);
    }
}
