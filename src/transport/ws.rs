//! WebSocket (RFC 6455) for MQTT, sans-IO: the HTTP upgrade, then binary frames whose
//! payloads are one byte stream to the MQTT codec.
//!
//! tungstenite does the parts with rules worth reusing: parsing the upgrade request (httparse),
//! validating it and deriving `Sec-WebSocket-Accept` (`create_response`), and the frame header
//! codec (`FrameHeader::parse` / `format`). The state machine over frames is ours, because
//! MQTT needs less than tungstenite's message API and must not pay for it: payload bytes are
//! unmasked straight into the connection's input as they arrive (a frame is never buffered
//! whole, whatever its size), an MQTT packet may span frames and a frame may carry several
//! packets [MQTT-6.0.0-2, MQTT-6.0.0-3], and our output is framed by adding one small header
//! in front of the broker's `Bytes`, with no copy.
//!
//! Rules enforced: a client frame must be masked (RFC 6455 5.1); no extension bits; MQTT only
//! in binary frames, a text frame closes the connection [MQTT-6.0.0-1]; control frames are
//! final and at most 125 bytes; a ping is answered with a pong; a close frame is answered
//! with a close frame, after which nothing more is read or sent. When the broker ends the
//! connection it sends a close frame with a status code that fits the reason ([`close_code`]).

use std::io::Cursor;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::Received;

/// Most bytes of an upgrade request (request line and headers); more closes the connection.
pub const HANDSHAKE_BYTES_MAX: usize = 8192;
/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const HEADER_BYTES_MAX: usize = 14;
/// Longest control frame payload (RFC 6455 5.5).
const CONTROL_BYTES_MAX: usize = 125;
/// The subprotocols MQTT clients ask for, in our order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Close frame status codes (RFC 6455 7.4.1) the broker sends.
pub mod close_code {
    /// The connection did what it was for (DISCONNECT, a refused CONNECT, a timeout).
    pub const NORMAL: u16 = 1000;
    /// The broker is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Broken WebSocket framing or a broken MQTT packet.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame: MQTT travels in binary frames only [MQTT-6.0.0-1].
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Closed by policy: a slow consumer, an operator's kick, revoked credentials.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// An MQTT packet over `max_packet_size`.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a WebSocket connection is ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("upgrade request over {HANDSHAKE_BYTES_MAX} bytes")]
    RequestTooLong,
    #[error("bad upgrade request: {0}")]
    BadRequest(String),
    #[error("upgrade request for path {0:?}")]
    WrongPath(String),
    #[error("no supported subprotocol in {0:?} (mqtt, mqttv3.1)")]
    NoSubprotocol(String),
    #[error("bad frame header: {0}")]
    BadHeader(String),
    #[error("unmasked client frame")]
    Unmasked,
    #[error("reserved bits set")]
    ReservedBits,
    #[error("text frame (MQTT needs binary frames) [MQTT-6.0.0-1]")]
    TextFrame,
    #[error("unexpected opcode {0}")]
    Opcode(u8),
    #[error("continuation frame outside a message")]
    StrayContinuation,
    #[error("new data frame inside a fragmented message")]
    UnfinishedMessage,
    #[error("control frame fragmented or over {CONTROL_BYTES_MAX} bytes")]
    BadControlFrame,
}

impl WsError {
    /// The close frame status code for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TextFrame => close_code::UNSUPPORTED_DATA,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// The frame being read.
#[derive(Debug)]
struct Frame {
    /// Payload bytes still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the mask index is this modulo 4).
    done: u64,
    /// `Some` for a control frame, whose payload is collected; `None` for data.
    control: Option<(Control, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Collecting the upgrade request.
    Upgrading,
    Open,
    /// A close frame was received or sent: nothing more is read or sent.
    Closed,
}

/// One connection's WebSocket state.
#[derive(Debug)]
pub struct WsLayer {
    path: Arc<str>,
    state: State,
    /// The upgrade request so far (only while upgrading).
    request: Vec<u8>,
    /// A frame header cut by the end of a receive.
    header: Vec<u8>,
    frame: Option<Frame>,
    /// Inside a fragmented binary message (its next data frame must be a continuation).
    fragmented: bool,
    /// What the layer must send of its own: the upgrade response, pongs, the close reply.
    output: Vec<Bytes>,
}

impl WsLayer {
    pub fn new(path: Arc<str>) -> Self {
        Self {
            path,
            state: State::Upgrading,
            request: Vec::new(),
            header: Vec::new(),
            frame: None,
            fragmented: false,
            output: Vec::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The broker ends the connection: queues a close frame with `code` (when the WebSocket is
    /// open; a close already exchanged or an upgrade never made sends nothing), after which
    /// nothing more is sent or read. The close is not awaited: the runtime closes the socket
    /// once the frame has left or its linger time has passed.
    pub fn close(&mut self, code: u16) {
        if self.state == State::Open {
            self.push_frame(OpCode::Control(Control::Close), &code.to_be_bytes());
            self.state = State::Closed;
        }
    }

    /// Takes received bytes; appends MQTT bytes to `input`.
    pub fn receive(&mut self, bytes: &[u8], input: &mut BytesMut) -> Result<Received, WsError> {
        if self.state == State::Upgrading {
            let Some(consumed) = self.upgrade(bytes)? else { return Ok(Received::default()) };
            // Bytes after the request are the first frames (pipelined by the client).
            let request = std::mem::take(&mut self.request);
            return self.read_frames(&request[consumed..], input);
        }
        self.read_frames(bytes, input)
    }

    fn read_frames(&mut self, mut bytes: &[u8], input: &mut BytesMut) -> Result<Received, WsError> {
        while !bytes.is_empty() && self.state == State::Open {
            if self.frame.is_none() {
                let Some(used) = self.read_header(bytes)? else { break };
                bytes = &bytes[used..];
            }
            bytes = self.read_payload(bytes, input);
        }
        Ok(Received { peer_closed: self.state == State::Closed })
    }

    /// Collects the request; when whole, answers it. Returns the request bytes it used.
    fn upgrade(&mut self, bytes: &[u8]) -> Result<Option<usize>, WsError> {
        if self.request.len() + bytes.len() > HANDSHAKE_BYTES_MAX {
            self.refuse("431 Request Header Fields Too Large");
            return Err(WsError::RequestTooLong);
        }
        self.request.extend_from_slice(bytes);
        let parsed = Request::try_parse(&self.request)
            .map_err(|error| self.refused(WsError::BadRequest(error.to_string())))?;
        let Some((used, request)) = parsed else { return Ok(None) };
        if request.uri().path() != &*self.path {
            self.refuse("404 Not Found");
            return Err(WsError::WrongPath(request.uri().path().to_owned()));
        }
        let mut response = create_response(&request)
            .map_err(|error| self.refused(WsError::BadRequest(error.to_string())))?;
        let offered = request.headers().get_all("Sec-WebSocket-Protocol");
        let offered: Vec<&str> = offered
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        if !offered.is_empty() {
            let Some(chosen) = SUBPROTOCOLS.iter().find(|ours| offered.contains(ours)) else {
                self.refuse("400 Bad Request");
                return Err(WsError::NoSubprotocol(offered.join(",")));
            };
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        }
        let mut text = Vec::with_capacity(192);
        write_response(&mut text, &response)
            .map_err(|error| WsError::BadRequest(error.to_string()))?;
        self.output.push(Bytes::from(text));
        self.state = State::Open;
        Ok(Some(used))
    }

    /// Queues an HTTP error response; the caller ends the connection after it has left.
    fn refuse(&mut self, status: &str) {
        let text = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        self.output.push(Bytes::from(text));
        self.state = State::Closed;
    }

    fn refused(&mut self, error: WsError) -> WsError {
        self.refuse("400 Bad Request");
        error
    }

    /// Parses a frame header from a cut-off header and `bytes`; returns the bytes of `bytes`
    /// it used, or `None` when the header is still incomplete (then all are kept).
    fn read_header(&mut self, bytes: &[u8]) -> Result<Option<usize>, WsError> {
        let kept = self.header.len();
        let parsed = if kept == 0 {
            let mut cursor = Cursor::new(bytes);
            parse(&mut cursor)?.map(|header| (header, cursor.position() as usize))
        } else {
            let take = bytes.len().min(HEADER_BYTES_MAX - kept);
            self.header.extend_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(&self.header[..]);
            parse(&mut cursor)?.map(|header| (header, cursor.position() as usize - kept))
        };
        let Some(((header, length), used)) = parsed else {
            if kept == 0 {
                self.header.extend_from_slice(bytes);
            }
            return Ok(None);
        };
        self.header.clear();
        self.frame = Some(self.check(&header, length)?);
        Ok(Some(used))
    }

    /// Checks a header against RFC 6455 and MQTT's rules; the frame to read.
    fn check(&mut self, header: &FrameHeader, length: u64) -> Result<Frame, WsError> {
        let mask = header.mask.ok_or(WsError::Unmasked)?;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::ReservedBits);
        }
        let control = match header.opcode {
            OpCode::Data(Data::Binary) if self.fragmented => {
                return Err(WsError::UnfinishedMessage)
            }
            OpCode::Data(Data::Binary) => {
                self.fragmented = !header.is_final;
                None
            }
            OpCode::Data(Data::Continue) if !self.fragmented => {
                return Err(WsError::StrayContinuation)
            }
            OpCode::Data(Data::Continue) => {
                self.fragmented = !header.is_final;
                None
            }
            OpCode::Data(Data::Text) => return Err(WsError::TextFrame),
            OpCode::Data(Data::Reserved(code)) | OpCode::Control(Control::Reserved(code)) => {
                return Err(WsError::Opcode(code))
            }
            OpCode::Control(control) => {
                if !header.is_final || length > CONTROL_BYTES_MAX as u64 {
                    return Err(WsError::BadControlFrame);
                }
                Some((control, Vec::new()))
            }
        };
        Ok(Frame { remaining: length, mask, done: 0, control })
    }

    /// Reads the current frame's payload from `bytes`; returns what is left of them.
    fn read_payload<'a>(&mut self, bytes: &'a [u8], input: &mut BytesMut) -> &'a [u8] {
        let Some(frame) = self.frame.as_mut() else { return bytes };
        let take = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(bytes.len());
        let (payload, rest) = bytes.split_at(take);
        match &mut frame.control {
            Some((_, collected)) => {
                let start = collected.len();
                collected.extend_from_slice(payload);
                unmask(&mut collected[start..], frame.mask, frame.done);
            }
            None => {
                let start = input.len();
                input.extend_from_slice(payload);
                unmask(&mut input[start..], frame.mask, frame.done);
            }
        }
        frame.done += take as u64;
        frame.remaining -= take as u64;
        if frame.remaining == 0 {
            if let Some(Some((control, payload))) = self.frame.take().map(|frame| frame.control) {
                self.on_control(control, payload);
            }
        }
        rest
    }

    fn on_control(&mut self, control: Control, payload: Vec<u8>) {
        match control {
            Control::Ping => self.push_frame(OpCode::Control(Control::Pong), &payload),
            Control::Pong => {}
            Control::Close => {
                // Echo the status code (RFC 6455 5.5.1); no body: nothing more is sent after.
                let code = payload.get(..2).unwrap_or(&[]).to_vec();
                self.push_frame(OpCode::Control(Control::Close), &code);
                self.state = State::Closed;
            }
            Control::Reserved(_) => unreachable!("refused by check"),
        }
    }

    fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Vec::with_capacity(HEADER_BYTES_MAX + payload.len());
        let header = FrameHeader { opcode, ..FrameHeader::default() };
        // Writing into a Vec cannot fail.
        header.format(payload.len() as u64, &mut frame).expect("a frame header fits a Vec");
        frame.extend_from_slice(payload);
        self.output.push(Bytes::from(frame));
    }

    /// Moves what the layer produced on its own to `out`.
    pub fn take_output(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.output);
    }

    /// Frames the broker's output (drained) as one binary frame appended to `out`: a header,
    /// then the `Bytes` themselves. Dropped once a close frame was exchanged (RFC 6455 5.5.1).
    pub fn frame(&mut self, mqtt: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
        let length: usize = mqtt.iter().map(Bytes::len).sum();
        if length == 0 || self.state != State::Open {
            mqtt.clear();
            return;
        }
        let mut header = Vec::with_capacity(10);
        let binary = FrameHeader { opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
        // Writing into a Vec cannot fail.
        binary.format(length as u64, &mut header).expect("a frame header fits a Vec");
        out.push(Bytes::from(header));
        out.append(mqtt);
    }
}

fn parse(cursor: &mut Cursor<&[u8]>) -> Result<Option<(FrameHeader, u64)>, WsError> {
    FrameHeader::parse(cursor).map_err(|error| WsError::BadHeader(error.to_string()))
}

/// XORs `payload` with `mask`, where `payload` starts `done` bytes into the frame's payload.
fn unmask(payload: &mut [u8], mask: [u8; 4], done: u64) {
    let shift = (done % 4) as usize;
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[(shift + index) % 4];
    }
}
