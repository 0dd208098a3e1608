//! Traces (`SIM_TRACE=client,client`) and one-line descriptions of packets and close reasons.

use ringmq::broker::CloseReason;
use ringmq::protocol::Packet;

use super::{ConnIndex, Runtime};

impl Runtime {
    /// Prints `what` if `client` is traced.
    pub fn trace(&self, client: usize, what: impl FnOnce() -> String) {
        if let Some(clients) = &self.trace {
            if clients.is_empty() || clients.contains(&client) {
                eprintln!("[step {} t={}] client {client}: {}", self.step, self.now.0, what());
            }
        }
    }

    pub(super) fn trace_conn(&self, conn: ConnIndex, what: impl FnOnce() -> String) {
        let c = &self.conns[conn];
        self.trace(c.client, || format!("conn {conn} ({:?} on w{}) {}", c.id, c.worker.0, what()));
    }
}

pub fn close_reason_name(reason: CloseReason) -> String {
    match reason {
        CloseReason::ProtocolError(_) => "ProtocolError".to_string(),
        CloseReason::ProtocolViolation(what) => format!("ProtocolViolation({what})"),
        CloseReason::ConnectRefused(code) => format!("ConnectRefused({code:?})"),
        other => format!("{other:?}"),
    }
}

/// A packet in one line for traces: its name and the fields that identify it.
pub fn describe(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!("CONNECT {} clean={}", c.client_id, c.clean_session),
        Packet::Connack(c) => format!("CONNACK {:?} present={}", c.code, c.session_present),
        Packet::Publish(p) => format!(
            "PUBLISH {} q{} dup={} id={:?} {}",
            p.topic.as_str(),
            p.qos.as_u8(),
            p.dup,
            p.packet_id.map(|i| i.get()),
            String::from_utf8_lossy(&p.payload[..p.payload.len().min(24)])
        ),
        Packet::Puback(id) => format!("PUBACK {}", id.get()),
        Packet::Pubrec(id) => format!("PUBREC {}", id.get()),
        Packet::Pubrel(id) => format!("PUBREL {}", id.get()),
        Packet::Pubcomp(id) => format!("PUBCOMP {}", id.get()),
        Packet::Subscribe(s) => format!(
            "SUBSCRIBE {} {:?}",
            s.packet_id.get(),
            s.filters
                .iter()
                .map(|(f, q)| format!("{}@{}", f.as_str(), q.as_u8()))
                .collect::<Vec<_>>()
        ),
        Packet::Suback(s) => format!("SUBACK {} {:?}", s.packet_id.get(), s.return_codes),
        Packet::Unsubscribe(u) => format!(
            "UNSUBSCRIBE {} {:?}",
            u.packet_id.get(),
            u.filters.iter().map(|f| f.as_str().to_string()).collect::<Vec<_>>()
        ),
        other => other.name().to_string(),
    }
}
