//! CONNECT: hand the connection to its session's home worker, or check it, take over or
//! create the session, and answer CONNACK [MQTT-3.1.4] [MQTT-3.2].
//!
//! Checks, in Mosquitto's order, each refused with CONNACK and a close [MQTT-3.2.2-5]:
//! - an empty client id with CleanSession=0 (or under MQTT 3.1, which requires one): 0x02
//!   [MQTT-3.1.3-8]; an empty id with CleanSession=1 is given a generated id whose home is this
//!   worker, so no handoff is needed [MQTT-3.1.3-6];
//! - `max_keepalive_secs` set and the keepalive above it, or 0 (no keepalive): 0x02, as
//!   Mosquitto does for 3.1.1 clients, which cannot be told a lower value;
//! - `allow_anonymous` off and no user name: 0x05;
//! - credentials, the failed-CONNECT limit and the will's ACL (`auth.rs`): 0x04 or 0x05;
//! - a new session at `sessions_max`: 0x03.
//!
//! Takeover [MQTT-3.1.4-2]: a CONNECT for a client id whose session is connected closes the old
//! connection (`TakenOver`) before anything else. Its will IS published: [MQTT-3.1.2-8] makes
//! DISCONNECT the only way a will is discarded, and the old client sent none. (Mosquitto 2
//! publishes it too, except when both connections are CleanSession=0.) Session present is 1
//! exactly when CleanSession=0 found a stored session [MQTT-3.2.2-1..3].

use super::auth::Verdict;
use super::connection::Phase;
use super::route::home_worker;
use super::{Action, Broker, CloseReason, ConnId, Millis, SessionId};
use crate::protocol::{Connack, Connect, ConnectReturnCode, Packet, ProtocolVersion, Utf8Bytes};

/// What became of a CONNECT.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Connected {
    Accepted,
    Refused,
    HandedOff,
}

impl Broker {
    /// `verdict`: the password check, when the runtime ran it off the loop (`auth.rs`);
    /// `None` checks inline.
    pub(super) fn handle_connect(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        verdict: Option<Verdict>,
        now: Millis,
    ) -> Connected {
        if !connect.client_id.is_empty() {
            let home = home_worker(connect.client_id.as_bytes(), self.workers);
            if home != self.me {
                // The runtime moves the socket; this worker forgets it (its timer goes stale).
                let peer = self.conns.remove(&conn).and_then(|state| state.peer());
                self.stats.handoffs += 1;
                self.actions.push_back(Action::Handoff { conn, to: home, connect, peer });
                return Connected::HandedOff;
            }
        }
        if let Err(code) = self.check_connect(&connect) {
            self.refuse_connect(conn, code, now);
            return Connected::Refused;
        }
        let identity = match self.authenticate(conn, &connect, verdict, now) {
            Ok(identity) => identity,
            Err(code) => {
                self.refuse_connect(conn, code, now);
                return Connected::Refused;
            }
        };
        let client_id = if connect.client_id.is_empty() {
            self.generate_client_id()
        } else {
            connect.client_id.clone()
        };
        self.take_over(&client_id, now);
        let Some((session, present)) = self.open_session(client_id, connect.clean_session, now)
        else {
            self.refuse_connect(conn, ConnectReturnCode::ServerUnavailable, now);
            return Connected::Refused;
        };
        self.attach_identity(session, identity);
        self.activate(conn, session, &connect, now);
        let connack = Connack { session_present: present, code: ConnectReturnCode::Accepted };
        self.write_control(conn, &Packet::Connack(connack));
        if present {
            self.redeliver(conn, session);
        }
        Connected::Accepted
    }

    pub(super) fn check_connect(&self, connect: &Connect) -> Result<(), ConnectReturnCode> {
        let empty_id = connect.client_id.is_empty();
        if empty_id && (!connect.clean_session || connect.protocol == ProtocolVersion::V31) {
            return Err(ConnectReturnCode::IdentifierRejected); // [MQTT-3.1.3-8]
        }
        let cap = self.config.max_keepalive_secs;
        if cap > 0 && (connect.keep_alive_secs == 0 || connect.keep_alive_secs > cap) {
            return Err(ConnectReturnCode::IdentifierRejected);
        }
        if !self.config.allow_anonymous && connect.username.is_none() {
            return Err(ConnectReturnCode::NotAuthorized);
        }
        Ok(())
    }

    /// Answers CONNACK with `code` (session present 0 [MQTT-3.2.2-4]) and closes.
    pub(super) fn refuse_connect(&mut self, conn: ConnId, code: ConnectReturnCode, now: Millis) {
        self.stats.connects_refused += 1;
        if matches!(
            code,
            ConnectReturnCode::BadUsernameOrPassword | ConnectReturnCode::NotAuthorized
        ) {
            self.stats.connects_refused_auth += 1;
        }
        let connack = Connack { session_present: false, code };
        self.write_control(conn, &Packet::Connack(connack));
        self.close_conn(conn, Some(CloseReason::ConnectRefused(code)), now);
    }

    /// A client id no session has, whose home is this worker.
    fn generate_client_id(&mut self) -> Utf8Bytes {
        loop {
            self.generated_ids += 1;
            let candidate = Utf8Bytes::from(format!("ringmq-{}-{}", self.me.0, self.generated_ids));
            let home = home_worker(candidate.as_bytes(), self.workers);
            if home == self.me && self.sessions.find(&candidate).is_none() {
                return candidate;
            }
        }
    }

    /// Closes the connection currently holding `client_id`'s session, if any [MQTT-3.1.4-2].
    fn take_over(&mut self, client_id: &Utf8Bytes, now: Millis) {
        let Some(session) = self.sessions.find(client_id) else {
            return;
        };
        if let Some(old) = self.sessions.get(session).conn {
            self.close_conn(old, Some(CloseReason::TakenOver), now);
        }
    }

    /// The session for this CONNECT and whether it was present; `None` at `sessions_max`.
    fn open_session(
        &mut self,
        client_id: Utf8Bytes,
        clean_session: bool,
        now: Millis,
    ) -> Option<(SessionId, bool)> {
        match self.sessions.find(&client_id) {
            // [MQTT-3.1.2-4] [MQTT-3.2.2-2]: resume the stored session.
            Some(session) if !clean_session => return Some((session, true)),
            // [MQTT-3.1.2-6]: discard the previous session, start a new one.
            Some(session) => self.destroy_session(session),
            None => {}
        }
        let session = self.create_session(client_id, !clean_session, now)?;
        if !clean_session {
            // Its packet ids start afresh: other workers forget the old session's.
            self.release_forwarded_everywhere(session, None);
        }
        Some((session, false))
    }

    fn activate(&mut self, conn: ConnId, session: SessionId, connect: &Connect, now: Millis) {
        self.attach_session(session, conn);
        let serial = self.next_serial();
        let state = self.conns.get_mut(&conn).expect("the connecting connection is known");
        state.phase = Phase::Active(session);
        state.serial = serial;
        state.last_heard = now;
        state.keepalive_grace_millis = u32::from(connect.keep_alive_secs) * 1500;
        state.set_will(connect.will.clone());
        self.stats.clients_connected += 1;
        self.file_conn_timer(conn);
    }
}
