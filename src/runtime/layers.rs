//! The runtime's side of the transports (`crate::transport`): where a TLS or WebSocket
//! connection's bytes pass through its layers.
//!
//! A plain MQTT connection has no layer and costs one flag test (`Conn::layered`) on each of
//! these paths. A layered connection's state lives in the worker's `layers` map under its
//! slot, from accept (or adoption) to its close completion (or handoff), so `Conn` stays
//! small. The hooks:
//! - receive: the provided buffer's bytes go through [`Layered::receive`] into `conn.input`;
//!   anything the layers must answer (handshake, upgrade response, pong) is queued at once;
//! - output: the broker's `Bytes` go through [`Layered::output`] into the send op;
//! - send completion: wire bytes are mapped back to MQTT bytes for `Broker::handle_sent`;
//! - handoff: the layers travel in the handoff record, so the home worker continues the same
//!   TLS session (and sends the CONNACK through it);
//! - close: a connection the broker closes gets a WebSocket close frame (its status code
//!   from the reason) and a TLS close_notify after its last output, never awaited.
//!
//! Bad transport input (a failed TLS handshake, a broken WebSocket frame) is counted and ends
//! that connection only, after what the layers queued for the peer (a TLS alert, an HTTP
//! error) has had its chance to leave.

use bytes::{Bytes, BytesMut};

use super::conn::Phase;
use super::worker::Worker;
use crate::broker::{CloseReason, ConnId, Millis};
use crate::protocol::{Connect, DecodeError, Utf8Bytes};
use crate::transport::{close_code, Layered, ListenerKind, Received, TransportError};

/// What a layered receive means for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LayeredInput {
    /// Decode the input as usual.
    Decode,
    /// Decode what arrived, then end the connection (the peer closed at its layer).
    DecodeThenEnd,
    /// The layers failed: the connection is ending; nothing is decoded.
    Ended,
}

impl Worker {
    /// Gives a just-accepted connection the layers its listener speaks. Returns false when
    /// they could not be made (counted; the caller closes the connection).
    pub(super) fn attach_layers(&mut self, slot: u32, kind: ListenerKind) -> bool {
        match self.layer_factory.layers_for(kind) {
            Ok(None) => true,
            Ok(Some(layered)) => {
                self.insert_layers(slot, layered);
                true
            }
            Err(error) => {
                self.counters.transport_errors += 1;
                tracing::warn!(slot, %error, listener = kind.name(), "cannot start the transport");
                false
            }
        }
    }

    pub(super) fn insert_layers(&mut self, slot: u32, layered: Box<Layered>) {
        let previous = self.layers.insert(slot, layered);
        assert!(previous.is_none(), "slot {slot} already had layers");
        self.conns.slot_mut(slot).layered = true;
    }

    /// Takes a connection's layers (for a handoff or after its close).
    pub(super) fn remove_layers(&mut self, slot: u32) -> Option<Box<Layered>> {
        let conn = self.conns.slot_mut(slot);
        if !conn.layered {
            return None;
        }
        conn.layered = false;
        let layered = self.layers.remove(&slot);
        assert!(layered.is_some(), "slot {slot} flagged layered without layers");
        layered
    }

    /// Passes received bytes through the connection's layers into its input.
    pub(super) fn receive_layered(
        layers: &mut super::worker::LayerMap,
        slot: u32,
        wire: &[u8],
        input: &mut BytesMut,
    ) -> Result<Received, TransportError> {
        let layered = layers.get_mut(&slot).unwrap_or_else(|| panic!("slot {slot} has no layers"));
        layered.receive(wire, input)
    }

    /// After a layered receive: queue what the layers must answer, and say what comes next.
    pub(super) fn after_layered_receive(
        &mut self,
        id: ConnId,
        outcome: Result<Received, TransportError>,
        now: Millis,
    ) -> LayeredInput {
        let slot = id.slot();
        // A connection being handed off keeps the layers' output in them: it leaves from
        // the home worker, after the CONNACK is queued there.
        if self.conns.slot_mut(slot).phase == Phase::Open {
            self.flush_layers(id);
        }
        match outcome {
            Ok(received) if received.peer_closed => LayeredInput::DecodeThenEnd,
            Ok(_) => LayeredInput::Decode,
            Err(error) => {
                self.counters.transport_errors += 1;
                tracing::debug!(conn = ?id, %error, "transport error: closing");
                if let Some(layered) = self.layers.get_mut(&slot) {
                    layered.close_after(&error);
                }
                self.end_by_transport(slot, now);
                LayeredInput::Ended
            }
        }
    }

    /// Moves whatever the layers produced on their own into the connection's send op.
    pub(super) fn flush_layers(&mut self, id: ConnId) {
        self.output_layered(id, false);
    }

    /// Moves the broker's output for a layered connection (and the layers' own output before
    /// it) into its send op, framed and encrypted.
    pub(super) fn take_layered_output(&mut self, id: ConnId) {
        self.output_layered(id, true);
    }

    fn output_layered(&mut self, id: ConnId, from_broker: bool) {
        let slot = id.slot();
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Some(layered) = self.layers.get_mut(&slot) else { return };
        let mut mqtt = std::mem::take(&mut self.mqtt_scratch);
        let mut wire = std::mem::take(&mut self.wire_scratch);
        if from_broker {
            self.broker.take_output(id, &mut mqtt);
        }
        if let Err(error) = layered.output(&mut mqtt, &mut wire) {
            // Only after the layer already failed (its connection is ending): nothing can be
            // encrypted any more, so the output is dropped.
            tracing::debug!(conn = ?id, %error, "output after a transport failure dropped");
        }
        mqtt.clear();
        self.mqtt_scratch = mqtt;
        // A send op only when there is something to send: an idle layered connection, like
        // a plain one, holds none.
        if !wire.is_empty() && conn.peer_alive {
            let op = conn.send.get_or_insert_with(|| self.sends.take());
            op.queue().append(&mut wire);
            self.list_for_flush(slot);
        }
        wire.clear();
        self.wire_scratch = wire;
    }

    /// The kernel sent `wire_bytes` of a connection's output: the MQTT bytes among them.
    pub(super) fn layered_sent(&mut self, slot: u32, wire_bytes: usize) -> usize {
        match self.layers.get_mut(&slot) {
            Some(layered) => layered.on_sent(wire_bytes),
            None => wire_bytes,
        }
    }

    /// The broker closes a layered connection (`Action::Close`), after its last output was
    /// taken: a WebSocket close frame with the code that fits `reason` and a TLS close_notify
    /// follow it (bounded like all output of a closing connection: `close_linger_millis`).
    pub(super) fn close_layers(&mut self, id: ConnId, reason: CloseReason) {
        let Some(layered) = self.layers.get_mut(&id.slot()) else { return };
        layered.close(ws_close_code(reason));
        self.flush_layers(id);
    }

    /// Ends a connection for a reason at its transport: the broker is told (an abnormal end:
    /// the will is published), and what the layers queued still leaves before the close,
    /// followed by a close: the answer to the peer's close_notify or close frame, or after an
    /// error the close frame [`Layered::close_after`] queued.
    pub(super) fn end_by_transport(&mut self, slot: u32, now: Millis) {
        let id = self.conns.id_of(slot);
        let conn = self.conns.slot_mut(slot);
        conn.input_closed = true;
        conn.input = super::conn::Input::default();
        let tell_broker = conn.broker_knows;
        conn.broker_knows = false;
        let open = conn.phase == Phase::Open;
        if tell_broker {
            self.broker.handle_closed(id, now);
        }
        if open {
            if let Some(layered) = self.layers.get_mut(&slot) {
                // A no-op for what was closed already (rustls and the WebSocket state say so).
                layered.close(close_code::NORMAL);
            }
            self.flush_layers(id);
            self.begin_close(slot, now);
        }
    }

    /// `use_identity_as_username`: the client certificate's common name becomes the CONNECT's
    /// user name, and its password is dropped (the certificate is the credential: see
    /// [`Self::identity_is_the_credential`]). A TLS connection without one keeps no user name
    /// and is refused (0x04; 0x05 where anonymous clients are refused), as in Mosquitto.
    pub(super) fn apply_identity(&mut self, slot: u32, connect: &mut Connect) {
        if !self.config.tls.use_identity_as_username {
            return;
        }
        let Some(layered) = self.layers.get(&slot) else { return };
        let identity = layered.identity();
        if identity.is_none() && !layered.is_tls() {
            // A plain WebSocket listener: there is no certificate to take a name from.
            return;
        }
        connect.username = identity.map(Utf8Bytes::from);
        connect.password = None::<Bytes>;
    }

    /// Whether this connection's CONNECT is authenticated by its TLS client certificate
    /// (`use_identity_as_username` on a TLS or WSS listener), so the password file is skipped.
    /// Asked on the worker that decodes the CONNECT and again on its home worker after a
    /// handoff (the layers travel with it).
    pub(super) fn identity_is_the_credential(&self, slot: u32) -> bool {
        self.config.tls.use_identity_as_username
            && self.layers.get(&slot).is_some_and(|layered| layered.is_tls())
    }
}

/// The WebSocket close status for a broker close (RFC 6455 7.4.1).
fn ws_close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::ProtocolError(DecodeError::PacketTooLarge { .. }) => close_code::TOO_BIG,
        CloseReason::ProtocolError(_) | CloseReason::ProtocolViolation(_) => {
            close_code::PROTOCOL_ERROR
        }
        CloseReason::Shutdown => close_code::GOING_AWAY,
        CloseReason::SlowConsumer | CloseReason::Kicked | CloseReason::CredentialsRevoked => {
            close_code::POLICY_VIOLATION
        }
        CloseReason::ClientDisconnect
        | CloseReason::ConnectRefused(_)
        | CloseReason::KeepaliveTimeout
        | CloseReason::ConnectTimeout
        | CloseReason::TakenOver => close_code::NORMAL,
    }
}

/// SIGHUP's certificate reload: rebuilds the TLS configuration from `certfile`, `keyfile` and
/// `cafile`; applied by itself (workers pick it up at their next TLS accept, by generation), so
/// open connections keep their sessions. A file that does not load changes nothing.
#[derive(Debug)]
pub(super) struct CertificateSource(pub std::sync::Arc<crate::transport::Transports>);

impl super::reload::ReloadSource for CertificateSource {
    fn name(&self) -> &'static str {
        "certificates"
    }

    fn load(&mut self) -> Result<(Option<super::reload::Reloaded>, String), String> {
        self.0.reload_certificates().map_err(|error| error.to_string())?;
        Ok((None, "TLS certificates reloaded".to_owned()))
    }
}
