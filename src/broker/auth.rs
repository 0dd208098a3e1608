//! The broker's authentication and authorisation hooks: CONNECT credentials, the per-address
//! failure limit, and the ACL on PUBLISH, SUBSCRIBE and each delivered message.
//!
//! - CONNECT (after the client id and keepalive checks, on the session's home worker):
//!   an address over `auth_failures_max` failures in its window is refused 0x05 without a
//!   hash being computed (`connects_rate_limited`); with a password file, a user name that is
//!   not listed, a wrong password or a missing password is refused 0x04 "bad user name or
//!   password" [MQTT-3.2.2-5] (`connects_refused_credentials`, and counted against the
//!   address); a will whose topic the ACL does not let the client write is refused 0x05
//!   (`connects_refused_unauthorised`), as Mosquitto does. Without a password file any user
//!   name is accepted.
//! - PUBLISH: a topic the client may not write is dropped and acknowledged by the normal QoS
//!   rules [MQTT-3.3.5-2] (`publishes_denied`); a retained one is not stored.
//! - SUBSCRIBE: see `auth::acl`: 0x80 for a filter nothing under which could be read
//!   (`subscriptions_denied`); a granted filter only partly readable marks its session
//!   `checked`, and every message routed to a checked session is checked for read access
//!   (`deliveries_denied`), the retained messages sent on SUBSCRIBE too.
//!
//! Verification cost: a `$7$` hash at Mosquitto's 101 iterations takes ~0.1-0.2 ms and at
//! 1000 iterations ~1.5 ms, too long for a ring loop (docs/ARCHITECTURE.md,
//! "Authentication"). So the runtime asks [`Broker::connect_needs_verification`] before
//! feeding a CONNECT; when a hash is needed it verifies the [`VerifyJob`] on a verifier
//! thread, holds the connection's input, and then calls [`Broker::handle_connect_verified`]
//! with the [`Verdict`]. `handle_packet(Connect)` (tests, the simulation) verifies inline.
//!
//! The tables are an `Arc<AuthTables>` swapped whole by [`Broker::set_auth`] (a reload). State
//! resolved against a table (a session's ACL user) carries the table's generation and is
//! resolved again, once, when it differs; a reload marks every session `checked`, since its
//! subscriptions were granted under the old rules. The checks on the message path walk the
//! tables in place and never allocate.

use std::sync::Arc;

use super::stats::WorkerStats;
use super::{Broker, CloseReason, ConnId, Millis, SessionId};
use crate::auth::{AclTable, SubscribeVerdict};
use crate::auth::{AclUser, AuthTables, Checked, FailureLimiter, Identity, LimiterConfig};
use crate::protocol::encode::encoded_len;
use crate::protocol::{Connect, ConnectReturnCode, Packet, TopicName, Utf8Bytes};

/// The outcome of a password check made off the loop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    Checked(Checked),
    /// The verifier's queue was full: CONNACK 0x03 "server unavailable" (counted).
    Unavailable,
    /// `use_identity_as_username` on a TLS listener: the credential is the verified client
    /// certificate, whose common name the runtime put in the CONNECT as its user name; the
    /// password file is not consulted (as in Mosquitto). Without a certificate (no user name)
    /// the CONNECT is refused 0x04.
    Certificate,
}

/// A password check to run off the loop: `tables.passwords` has `username`.
#[derive(Clone, Debug)]
pub struct VerifyJob {
    pub tables: Arc<AuthTables>,
    pub username: Utf8Bytes,
    pub password: bytes::Bytes,
}

impl VerifyJob {
    /// Runs the check (the expensive part); on a verifier thread.
    pub fn run(&self) -> Verdict {
        let passwords =
            self.tables.passwords.as_ref().expect("a job is made only with a password file");
        Verdict::Checked(passwords.check(self.username.as_str(), &self.password))
    }
}

/// A session's identity for the ACL, when it has a user name or an ACL is loaded.
#[derive(Debug)]
pub(super) struct SessionAuth {
    pub username: Option<Utf8Bytes>,
    /// The user's rule list in the table of `generation`.
    pub acl_user: AclUser,
    pub generation: u64,
    /// Some granted filter is only partly readable: check each delivered message.
    pub checked: bool,
    /// The user name came from a client certificate, not the password file: a reload of the
    /// password file does not concern it.
    pub by_certificate: bool,
}

/// The tables of one worker, and the failure limiter it shares with the others.
#[derive(Debug)]
pub(super) struct AuthState {
    pub tables: Arc<AuthTables>,
    /// A broker's own until the runtime gives it the one every worker shares
    /// ([`Broker::share_failure_limiter`]).
    pub limiter: Arc<FailureLimiter>,
}

impl AuthState {
    pub fn new(limiter: LimiterConfig) -> Self {
        let limiter = Arc::new(FailureLimiter::new(limiter, 0));
        Self { tables: Arc::new(AuthTables::default()), limiter }
    }
}

/// Read access of a session to `topic`, resolving its ACL user again after a reload.
/// Does not allocate.
fn session_may_read(
    acl: &AclTable,
    generation: u64,
    client_id: &str,
    auth: Option<&mut SessionAuth>,
    topic: &str,
) -> bool {
    let Some(auth) = auth else {
        // No user name and no identity recorded: an anonymous client, always checked.
        let who = Identity { client_id, username: None };
        return acl.may_read(AclUser::Anonymous, who, topic);
    };
    if auth.generation != generation {
        auth.acl_user = acl.resolve(auth.username.as_ref().map(Utf8Bytes::as_str));
        auth.generation = generation;
        auth.checked = true;
    }
    if !auth.checked {
        return true;
    }
    let who = Identity { client_id, username: auth.username.as_ref().map(Utf8Bytes::as_str) };
    acl.may_read(auth.acl_user, who, topic)
}

impl Broker {
    /// Replaces the password and ACL tables (a reload). Connections stay; the next CONNECT,
    /// PUBLISH, SUBSCRIBE and delivery use the new tables.
    pub fn set_auth(&mut self, tables: Arc<AuthTables>) {
        self.auth.tables = tables;
    }

    /// A reload's new tables (SIGHUP). As Mosquitto does on a reload, a connected client that
    /// logged in with a password is disconnected (will published; counted as
    /// `CredentialsRevoked`) when the new password file no longer lists its user or its
    /// user's line changed (a new password). ringmq keeps no passwords to check again, so any
    /// change of the line counts: a re-hash of the same password disconnects too, where
    /// Mosquitto, which keeps the password and checks it again, would not. A client whose user
    /// name came from its certificate, an anonymous one, and every client when the new tables
    /// have no password file, stay. One pass over this worker's connections. Returns how many
    /// were closed.
    pub fn reload_auth(&mut self, tables: Arc<AuthTables>, now: Millis) -> usize {
        let old = std::mem::replace(&mut self.auth.tables, tables);
        let Some(passwords) = self.auth.tables.passwords.as_ref() else { return 0 };
        let old_passwords = old.passwords.as_ref();
        let revoked: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(conn, state)| {
                let super::connection::Phase::Active(session) = state.phase else { return None };
                let auth = self.sessions.get(session).auth.as_deref()?;
                let user = auth.username.as_ref().filter(|_| !auth.by_certificate)?.as_str();
                match (old_passwords.and_then(|old| old.get(user)), passwords.get(user)) {
                    (Some(before), Some(after)) if before == after => None,
                    _ => Some(conn),
                }
            })
            .collect();
        for &conn in &revoked {
            self.close_conn(conn, Some(CloseReason::CredentialsRevoked), now);
        }
        self.settle(now);
        revoked.len()
    }

    /// Makes this broker count failed logins in `limiter`, which the runtime gives every
    /// worker, so an address gets `auth_failures_max` in all, not per worker.
    pub fn share_failure_limiter(&mut self, limiter: Arc<FailureLimiter>) {
        self.auth.limiter = limiter;
    }

    /// The tables in use.
    pub fn auth_tables(&self) -> &Arc<AuthTables> {
        &self.auth.tables
    }

    /// The password check `connect` needs on this worker, if any: `None` when it will be
    /// handed off, refused before any hash (a bad client id, no user name, no password, a
    /// limited address), or when there is no password file. The runtime runs the job off the
    /// loop and calls [`Self::handle_connect_verified`].
    pub fn connect_needs_verification(
        &self,
        conn: ConnId,
        connect: &Connect,
        now: Millis,
    ) -> Option<VerifyJob> {
        let state = self.conns.get(&conn)?;
        if state.phase != super::connection::Phase::AwaitingConnect {
            return None;
        }
        let empty_id = connect.client_id.is_empty();
        if !empty_id && super::home_worker(connect.client_id.as_bytes(), self.workers) != self.me {
            return None;
        }
        self.check_connect(connect).ok()?;
        self.auth.tables.passwords.as_ref()?;
        let (username, password) = (connect.username.clone()?, connect.password.clone()?);
        if let Some(peer) = state.peer() {
            if !self.auth.limiter.allows(peer.ip(), now.0) {
                return None;
            }
        }
        Some(VerifyJob { tables: Arc::clone(&self.auth.tables), username, password })
    }

    /// A CONNECT whose password was checked off the loop (see the module documentation):
    /// handled as `handle_packet(Packet::Connect(connect))` would, with `verdict`.
    pub fn handle_connect_verified(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        verdict: Verdict,
        now: Millis,
    ) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if state.phase != super::connection::Phase::AwaitingConnect {
            return;
        }
        state.last_heard = now;
        let packet = Packet::Connect(connect);
        self.stats.bytes_received += encoded_len(&packet) as u64;
        let Packet::Connect(connect) = packet else { unreachable!("just built as a CONNECT") };
        self.handle_connect(conn, connect, Some(verdict), now);
        self.settle(now);
    }

    /// A CONNECT on a `use_identity_as_username` TLS connection: its user name is the client
    /// certificate's common name (or none without a certificate), and it is checked with
    /// [`Verdict::Certificate`] instead of the password file. Any other packet sequence (a
    /// second CONNECT) is handled as `handle_packet` would.
    pub fn handle_connect_with_certificate(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        now: Millis,
    ) {
        let awaiting = self
            .conns
            .get(&conn)
            .is_some_and(|state| state.phase == super::connection::Phase::AwaitingConnect);
        if awaiting {
            self.handle_connect_verified(conn, connect, Verdict::Certificate, now);
        } else {
            self.handle_packet(conn, Packet::Connect(connect), now);
        }
    }

    /// Checks a CONNECT's credentials and will; on success, the session's identity.
    pub(super) fn authenticate(
        &mut self,
        conn: ConnId,
        connect: &Connect,
        verdict: Option<Verdict>,
        now: Millis,
    ) -> Result<Option<Box<SessionAuth>>, ConnectReturnCode> {
        let address = self.conns.get(&conn).and_then(|state| state.peer()).map(|peer| peer.ip());
        let username = connect.username.as_ref();
        let tables = Arc::clone(&self.auth.tables);
        let by_certificate = verdict == Some(Verdict::Certificate);
        if by_certificate {
            if username.is_none() {
                self.stats.connects_refused_credentials += 1;
                return Err(ConnectReturnCode::BadUsernameOrPassword);
            }
        } else if let (Some(user), Some(passwords)) = (username, tables.passwords.as_ref()) {
            if let Some(ip) = address {
                if !self.auth.limiter.allows(ip, now.0) {
                    self.stats.connects_rate_limited += 1;
                    return Err(ConnectReturnCode::NotAuthorized);
                }
            }
            let checked = match (verdict, &connect.password) {
                (Some(Verdict::Unavailable), _) => {
                    self.stats.connects_refused_busy += 1;
                    return Err(ConnectReturnCode::ServerUnavailable);
                }
                (Some(Verdict::Certificate), _) => unreachable!("handled above"),
                (_, None) => Checked::WrongPassword,
                (Some(Verdict::Checked(checked)), Some(_)) => checked,
                (None, Some(password)) => passwords.check(user.as_str(), password),
            };
            if checked != Checked::Valid {
                self.stats.connects_refused_credentials += 1;
                if let Some(ip) = address {
                    let recorded = self.auth.limiter.record_failure(ip, now.0);
                    if recorded == crate::auth::limiter::Recorded::TableFull {
                        self.stats.auth_limiter_full += 1;
                    }
                }
                return Err(ConnectReturnCode::BadUsernameOrPassword);
            }
        }
        let identity = (username.is_some() || tables.acl.is_some()).then(|| {
            let acl_user = tables
                .acl
                .as_ref()
                .map_or(AclUser::Anonymous, |acl| acl.resolve(username.map(Utf8Bytes::as_str)));
            Box::new(SessionAuth {
                username: username.cloned(),
                acl_user,
                generation: tables.generation,
                checked: false,
                by_certificate,
            })
        });
        if let (Some(acl), Some(will)) = (tables.acl.as_ref(), connect.will.as_ref()) {
            let who = Identity {
                client_id: connect.client_id.as_str(),
                username: username.map(Utf8Bytes::as_str),
            };
            let user = identity.as_ref().map_or(AclUser::Anonymous, |auth| auth.acl_user);
            if !acl.may_write(user, who, will.topic.as_str()) {
                self.stats.connects_refused_unauthorised += 1;
                return Err(ConnectReturnCode::NotAuthorized);
            }
        }
        Ok(identity)
    }

    /// Gives a new or resumed session its identity. A resumed session's subscriptions were
    /// granted to whoever held it before, so its deliveries are checked.
    pub(super) fn attach_identity(
        &mut self,
        session: SessionId,
        identity: Option<Box<SessionAuth>>,
    ) {
        let state = self.sessions.get_mut(session);
        let resumed = !state.subscriptions.is_empty();
        state.auth = identity.map(|mut auth| {
            auth.checked = resumed;
            auth
        });
    }

    /// Whether the session may publish to `topic` (counted when not). Does not allocate.
    /// Takes the `TopicName`, not its text: `as_str` checks the UTF-8 again (the protocol
    /// module has no unchecked conversion), which without an ACL is wasted on every publish.
    pub(super) fn may_publish(&mut self, session: SessionId, topic: &TopicName) -> bool {
        let Some(acl) = self.auth.tables.acl.as_ref() else {
            return true;
        };
        let topic = topic.as_str();
        let state = self.sessions.get(session);
        let (user, username) = match state.auth.as_deref() {
            Some(auth) if auth.generation == self.auth.tables.generation => {
                (auth.acl_user, auth.username.as_ref().map(Utf8Bytes::as_str))
            }
            Some(auth) => {
                let username = auth.username.as_ref().map(Utf8Bytes::as_str);
                (acl.resolve(username), username)
            }
            None => (AclUser::Anonymous, None),
        };
        let who = Identity { client_id: state.client_id.as_str(), username };
        let allowed = acl.may_write(user, who, topic);
        if !allowed {
            self.stats.publishes_denied += 1;
        }
        allowed
    }

    /// The SUBACK verdict for one filter; marks the session `checked` when needed.
    pub(super) fn subscribe_allowed(&mut self, session: SessionId, filter: &str) -> bool {
        let Some(acl) = self.auth.tables.acl.as_ref() else {
            return true;
        };
        let generation = self.auth.tables.generation;
        let state = self.sessions.get_mut(session);
        let client_id = state.client_id.as_str();
        let (user, username) = match state.auth.as_deref_mut() {
            Some(auth) => {
                if auth.generation != generation {
                    auth.acl_user = acl.resolve(auth.username.as_ref().map(Utf8Bytes::as_str));
                    auth.generation = generation;
                    auth.checked = true;
                }
                (auth.acl_user, auth.username.as_ref().map(Utf8Bytes::as_str))
            }
            None => (AclUser::Anonymous, None),
        };
        let who = Identity { client_id, username };
        match acl.subscribe_verdict(user, who, filter) {
            SubscribeVerdict::Denied => {
                self.stats.subscriptions_denied += 1;
                false
            }
            SubscribeVerdict::Granted { checked } => {
                if let Some(auth) = state.auth.as_deref_mut() {
                    auth.checked |= checked;
                }
                true
            }
        }
    }

    /// Whether a message on `topic` may be delivered to `session` (counted when not).
    /// Does not allocate; the topic's text is made only when an ACL is loaded (see
    /// `may_publish`): a fan-out without one checks nothing per subscriber.
    pub(super) fn may_deliver(&mut self, session: SessionId, topic: &TopicName) -> bool {
        let Self { auth, sessions, stats, .. } = self;
        let Some(acl) = auth.tables.acl.as_ref() else {
            return true;
        };
        let topic = topic.as_str();
        let state = sessions.get_mut(session);
        let allowed = session_may_read(
            acl,
            auth.tables.generation,
            state.client_id.as_str(),
            state.auth.as_deref_mut(),
            topic,
        );
        count_denied_delivery(stats, allowed);
        allowed
    }
}

fn count_denied_delivery(stats: &mut WorkerStats, allowed: bool) {
    if !allowed {
        stats.deliveries_denied += 1;
    }
}
