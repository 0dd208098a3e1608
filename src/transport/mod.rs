//! Byte-stream layers between the socket and the MQTT codec: TLS, WebSocket, and both (WSS).
//!
//! Plain MQTT over TCP has no layer at all: the runtime copies received bytes straight into
//! the connection's input and sends the broker's `Bytes` as they are, so the transports cost a
//! plain connection nothing but one flag test. A connection accepted on a TLS or WebSocket
//! listener gets a boxed [`Layered`], which is sans-IO like the codec: [`Layered::receive`]
//! takes the bytes a receive brought and appends the MQTT bytes they carry to the input;
//! [`Layered::output`] turns the broker's output into wire bytes (framed, encrypted) and adds
//! whatever the layers must send on their own (handshake records, the WebSocket upgrade
//! response, pongs, a close frame, a TLS alert). When the broker ends a connection,
//! [`Layered::close`] queues a WebSocket close frame with a status code that fits the reason and
//! a TLS close_notify, so a client sees a clean end, not a cut. Nothing here blocks, reads a
//! clock (but rustls's certificate validity check) or touches a socket.
//!
//! Invariants:
//! - Wire output leaves in the order it was produced: everything goes through
//!   [`Layered::output`], which first drains what the layers produced on their own.
//! - The broker counts the *MQTT* bytes it handed over ([`crate::broker::Broker::handle_sent`]),
//!   so every batch of wire bytes is recorded with the MQTT bytes it carries, and
//!   [`Layered::on_sent`] turns a send completion's wire count back into MQTT bytes: the
//!   broker's output bound keeps working through the layers.
//! - The state moves with the connection when it is handed to its session's home worker.

pub mod tls;
pub mod ws;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use tls::{TlsCache, TlsFiles, TlsSetupError, TlsSource};
pub use ws::{close_code, WsError};

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// MQTT straight over TCP: no layer.
    Mqtt,
    /// MQTT over TLS (`mqtts`, port 8883 by default).
    Mqtts,
    /// MQTT over WebSocket (`ws`).
    Ws,
    /// MQTT over WebSocket over TLS (`wss`).
    Wss,
}

impl ListenerKind {
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Mqtts | Self::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtts => "mqtts",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }
}

/// Why a layered connection must end. Bad bytes from one client end that client only.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS: {0}")]
    TlsIo(#[from] std::io::Error),
    #[error("WebSocket: {0}")]
    Ws(#[from] WsError),
}

/// What one receive brought besides MQTT bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The peer ended the session at this layer (a WebSocket close frame, a TLS
    /// close_notify): no more input will come; what we queued (a close reply) should leave.
    pub peer_closed: bool,
}

/// What every worker's layers are made from: the TLS configuration (reloadable) and the
/// WebSocket path. Shared by all workers; read only at accept and on reload.
#[derive(Debug)]
pub struct Transports {
    pub tls: Option<TlsSource>,
    pub ws_path: Arc<str>,
}

impl Transports {
    /// Loads the certificate files when a TLS listener needs them.
    pub fn new(tls: Option<&TlsFiles>, ws_path: &str) -> Result<Self, TlsSetupError> {
        let tls = tls.map(TlsSource::load).transpose()?;
        Ok(Self { tls, ws_path: ws_path.into() })
    }

    /// Reads the certificate files again; connections opened from now on use them, open ones
    /// keep theirs. On an error the previous certificates stay in use.
    pub fn reload_certificates(&self) -> Result<bool, TlsSetupError> {
        match &self.tls {
            Some(source) => source.reload().map(|()| true),
            None => Ok(false),
        }
    }
}

/// One worker's view of [`Transports`]: a cached TLS configuration, refreshed at accept when
/// a reload has published a new one.
#[derive(Debug)]
pub struct LayerFactory {
    shared: Arc<Transports>,
    tls: Option<TlsCache>,
}

impl LayerFactory {
    pub fn new(shared: Arc<Transports>) -> Self {
        let tls = shared.tls.as_ref().map(TlsSource::cache);
        Self { shared, tls }
    }

    /// The layers for a connection accepted on a `kind` listener; `None` for plain MQTT.
    pub fn layers_for(
        &mut self,
        kind: ListenerKind,
    ) -> Result<Option<Box<Layered>>, TransportError> {
        if kind == ListenerKind::Mqtt {
            return Ok(None);
        }
        let tls = match (kind.uses_tls(), &self.shared.tls, &mut self.tls) {
            (true, Some(source), Some(cache)) => Some(tls::TlsLayer::new(source.current(cache))?),
            (true, _, _) => panic!("a {} listener without a TLS configuration", kind.name()),
            (false, _, _) => None,
        };
        let ws = kind.uses_websocket().then(|| ws::WsLayer::new(Arc::clone(&self.shared.ws_path)));
        Ok(Some(Box::new(Layered::new(tls, ws))))
    }
}

/// Wire bytes handed to the send, and the MQTT bytes they carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    wire_bytes: usize,
    mqtt_bytes: usize,
}

/// The layers of one TLS and/or WebSocket connection.
#[derive(Debug)]
pub struct Layered {
    tls: Option<tls::TlsLayer>,
    ws: Option<ws::WsLayer>,
    /// WSS only: what TLS decrypted, before the WebSocket layer unframes it.
    decrypted: BytesMut,
    /// WSS only: WebSocket frames on their way into TLS.
    framed: Vec<Bytes>,
    /// Output handed to the send and not yet confirmed, oldest first.
    spans: VecDeque<Span>,
}

impl Layered {
    pub fn new(tls: Option<tls::TlsLayer>, ws: Option<ws::WsLayer>) -> Self {
        assert!(tls.is_some() || ws.is_some(), "a layered connection without a layer");
        Self { tls, ws, decrypted: BytesMut::new(), framed: Vec::new(), spans: VecDeque::new() }
    }

    /// Takes the bytes one receive brought; appends the MQTT bytes they carry to `input`.
    pub fn receive(
        &mut self,
        wire: &[u8],
        input: &mut BytesMut,
    ) -> Result<Received, TransportError> {
        match (&mut self.tls, &mut self.ws) {
            (Some(tls), None) => tls.receive(wire, input),
            (None, Some(ws)) => Ok(ws.receive(wire, input)?),
            (Some(tls), Some(ws)) => {
                let tls_closed = tls.receive(wire, &mut self.decrypted)?;
                let ws_closed = ws.receive(&self.decrypted, input)?;
                self.decrypted.clear();
                if self.decrypted.capacity() > ws::HANDSHAKE_BYTES_MAX {
                    // Between receives the scratch holds nothing; do not keep a big one.
                    self.decrypted = BytesMut::new();
                }
                Ok(Received { peer_closed: tls_closed.peer_closed || ws_closed.peer_closed })
            }
            (None, None) => unreachable!("checked in new"),
        }
    }

    /// Turns the broker's output `mqtt` (drained) into wire bytes appended to `out`, after
    /// whatever the layers produced on their own (`mqtt` may be empty for just that).
    pub fn output(
        &mut self,
        mqtt: &mut Vec<Bytes>,
        out: &mut Vec<Bytes>,
    ) -> Result<(), TransportError> {
        let mqtt_bytes: usize = mqtt.iter().map(Bytes::len).sum();
        let before = out.len();
        match (&mut self.tls, &mut self.ws) {
            (Some(tls), None) => {
                tls.encrypt(mqtt)?;
                mqtt.clear();
                tls.take_wire(out)?;
            }
            (None, Some(ws)) => {
                ws.take_output(out);
                ws.frame(mqtt, out);
            }
            (Some(tls), Some(ws)) => {
                ws.take_output(&mut self.framed);
                ws.frame(mqtt, &mut self.framed);
                tls.encrypt(&self.framed)?;
                self.framed.clear();
                tls.take_wire(out)?;
            }
            (None, None) => unreachable!("checked in new"),
        }
        mqtt.clear();
        let wire_bytes: usize = out[before..].iter().map(Bytes::len).sum();
        if wire_bytes > 0 || mqtt_bytes > 0 {
            self.spans.push_back(Span { wire_bytes, mqtt_bytes });
        }
        Ok(())
    }

    /// The kernel sent `wire_bytes` of our output: returns the MQTT bytes now wholly sent
    /// (a batch counts once all its wire bytes have left).
    pub fn on_sent(&mut self, wire_bytes: usize) -> usize {
        let mut left = wire_bytes;
        let mut mqtt_bytes = 0;
        while let Some(span) = self.spans.front_mut() {
            if span.wire_bytes > left {
                span.wire_bytes -= left;
                left = 0;
                break;
            }
            left -= span.wire_bytes;
            mqtt_bytes += span.mqtt_bytes;
            self.spans.pop_front();
        }
        assert!(left == 0, "{left} wire bytes sent beyond the output");
        mqtt_bytes
    }

    /// The broker ends the connection: a WebSocket close frame with `ws_code` (when the
    /// WebSocket is open), then a TLS close_notify, queued for the next [`Self::output`], which
    /// the runtime makes at once. Best effort and never awaited: they leave with the output
    /// still queued, within the close's linger time, and the socket is closed after them.
    pub fn close(&mut self, ws_code: u16) {
        if let Some(ws) = &mut self.ws {
            ws.close(ws_code);
        }
        if let Some(tls) = &mut self.tls {
            if let Some(ws) = &mut self.ws {
                // WSS: the close frame goes into TLS before the close_notify.
                ws.take_output(&mut self.framed);
                // Fails only when TLS already failed; then nothing more can be sent anyway.
                let _ = tls.encrypt(&self.framed);
                self.framed.clear();
            }
            tls.close();
        }
    }

    /// Ends the connection after the layers failed: a WebSocket error gets its close frame
    /// (and, under TLS, a close_notify); a TLS failure has its alert queued already.
    pub fn close_after(&mut self, error: &TransportError) {
        if let TransportError::Ws(error) = error {
            self.close(error.close_code());
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The client certificate's subject common name (TLS with a verified client certificate).
    pub fn identity(&self) -> Option<String> {
        self.tls.as_ref().and_then(tls::TlsLayer::identity)
    }
}
