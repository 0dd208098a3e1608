//! The relay: a trivial MQTT forwarder that measures this machine's ceiling for moving the
//! benchmark's messages through one extra process hop, so a broker's figure can be stated as
//! a fraction of it.
//!
//! It frames packets (fixed header and remaining length only), answers what a client waits for
//! (CONNACK, SUBACK, PUBACK/PUBREC/PUBREL/PUBCOMP, PINGRESP) without checking anything, and
//! copies each PUBLISH frame verbatim to every connection subscribed to exactly its topic
//! (no wildcards, no sessions, no retained messages, no QoS state beyond the replies). One
//! thread, one io_uring, accepted connections as direct descriptors, one receive and one send
//! in flight per connection.
//!
//! Bounded: a connection's queued output is capped at `queue_bytes_max`; a publisher whose
//! message pushes a subscriber over it stops being read until that subscriber's queue drains
//! (TCP backpressure, no loss). Invariants: receive and send buffers stay alive and unmoved
//! while their operation is in flight; a slot's generation changes on every accept, so a late
//! completion for a previous connection in that slot is dropped.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use serde::Serialize;

use crate::ring::{self, Completion, Op, Ring};

/// Bytes each connection can receive at once (a larger frame grows its buffer).
const RECV_BYTES: usize = 64 * 1024;
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddrV4,
    /// Direct-descriptor slots: the most connections the relay holds.
    pub connections_max: u32,
    /// Output queued per connection before its publishers are paused.
    pub queue_bytes_max: usize,
    /// Test knob: drop every n-th PUBLISH instead of forwarding it (0: never). Lets the
    /// end-to-end test prove that the load generator detects loss.
    pub drop_one_in: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RelayStats {
    pub connections: u64,
    pub publishes_in: u64,
    /// PUBLISH copies written to subscribers.
    pub forwarded: u64,
    pub dropped: u64,
    /// Times a publisher was paused by a full subscriber queue.
    pub pauses: u64,
    pub cpu_ns: (u64, u64),
}

/// A running relay; [`Relay::stop`] ends it.
#[derive(Debug)]
pub struct Relay {
    pub address: SocketAddrV4,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<io::Result<RelayStats>>,
}

impl Relay {
    pub fn start(config: RelayConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen)?;
        // Accepted sockets inherit TCP_NODELAY from the listener.
        ring::set_option(listener.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        let address = match listener.local_addr()? {
            std::net::SocketAddr::V4(address) => address,
            std::net::SocketAddr::V6(_) => return Err(io::Error::other("relay listens on IPv4")),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new().name("relay".into()).spawn(move || {
            let mut relay = match RelayLoop::new(&config, &listener) {
                Ok(relay) => relay,
                Err(error) => {
                    let _ = ready_tx.send(Err(io::Error::new(error.kind(), error.to_string())));
                    return Err(error);
                }
            };
            let _ = ready_tx.send(Ok(()));
            relay.run(&thread_stop)?;
            drop(listener);
            Ok(relay.stats())
        })?;
        ready_rx.recv().map_err(|_| io::Error::other("relay thread died while starting"))??;
        Ok(Self { address, stop, handle })
    }

    pub fn stop(self) -> io::Result<RelayStats> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().map_err(|_| io::Error::other("relay thread panicked"))?
    }
}

#[derive(Debug)]
struct RelayConn {
    generation: u32,
    rx: Box<[u8]>,
    filled: usize,
    recv_in_flight: bool,
    paused: bool,
    tx: Vec<u8>,
    sending: Vec<u8>,
    send_offset: usize,
    send_in_flight: bool,
    closing: bool,
    dirty: bool,
    topics: Vec<Vec<u8>>,
    /// Publishers paused until this connection's queue drains: (slot, generation).
    waiters: Vec<(u32, u32)>,
}

impl RelayConn {
    fn new(generation: u32) -> Self {
        Self {
            generation,
            rx: vec![0; RECV_BYTES].into_boxed_slice(),
            filled: 0,
            recv_in_flight: false,
            paused: false,
            tx: Vec::new(),
            sending: Vec::new(),
            send_offset: 0,
            send_in_flight: false,
            closing: false,
            dirty: false,
            topics: Vec::new(),
            waiters: Vec::new(),
        }
    }
}

struct RelayLoop {
    ring: Ring,
    conns: Vec<Option<RelayConn>>,
    generations: Vec<u32>,
    topics: HashMap<Vec<u8>, Vec<(u32, u32)>>,
    dirty: Vec<u32>,
    completions: Vec<Completion>,
    queue_bytes_max: usize,
    drop_one_in: u64,
    stats: RelayStats,
}

impl RelayLoop {
    fn new(config: &RelayConfig, listener: &TcpListener) -> io::Result<Self> {
        let ring = Ring::new(
            config.connections_max.next_power_of_two().clamp(256, 8192),
            config.connections_max,
        )?;
        let slots = config.connections_max as usize;
        let mut relay = Self {
            ring,
            conns: (0..slots).map(|_| None).collect(),
            generations: vec![0; slots],
            topics: HashMap::new(),
            dirty: Vec::new(),
            completions: Vec::new(),
            queue_bytes_max: config.queue_bytes_max,
            drop_one_in: config.drop_one_in,
            stats: RelayStats::default(),
        };
        relay.arm_accept(listener.as_raw_fd())?;
        Ok(relay)
    }

    fn arm_accept(&mut self, listener: i32) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(true)
            .build()
            .user_data(ring::pack(Op::Accept, 0, listener as u32));
        // SAFETY: a multishot accept into the file table references no memory of ours.
        unsafe { self.ring.push(&entry) }
    }

    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Acquire) {
            self.flush()?;
            self.ring.submit(1, Some(Duration::from_millis(10)))?;
            self.dispatch()?;
        }
        self.shutdown()
    }

    fn stats(&self) -> RelayStats {
        RelayStats { cpu_ns: crate::sys::thread_cpu_ns(), ..self.stats }
    }

    fn dispatch(&mut self) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.drain(&mut completions);
        for completion in completions.drain(..) {
            let Some((op, generation, slot)) = ring::unpack(completion.user_data) else { continue };
            match op {
                Op::Accept => self.on_accept(&completion, slot as i32)?,
                Op::Recv | Op::Send if self.is_current(slot, generation) => {
                    if op == Op::Recv {
                        self.on_recv(slot, completion.result)?;
                    } else {
                        self.on_send(slot, completion.result)?;
                    }
                    self.close_if_done(slot)?;
                }
                _ => {}
            }
        }
        self.completions = completions;
        Ok(())
    }

    fn is_current(&self, slot: u32, generation: u32) -> bool {
        self.conns
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|conn| conn.generation == generation)
    }

    fn conn(&mut self, slot: u32) -> &mut RelayConn {
        self.conns[slot as usize].as_mut().expect("completion for a live connection")
    }

    fn on_accept(&mut self, completion: &Completion, listener: i32) -> io::Result<()> {
        if !completion.more() {
            self.arm_accept(listener)?;
        }
        let Ok(slot) = u32::try_from(completion.result) else { return Ok(()) };
        let Some(entry) = self.conns.get_mut(slot as usize) else { return Ok(()) };
        let generation = (self.generations[slot as usize] + 1) & 0xFF_FFFF;
        self.generations[slot as usize] = generation;
        *entry = Some(RelayConn::new(generation));
        self.stats.connections += 1;
        self.submit_recv(slot)
    }

    fn submit_recv(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.conn(slot);
        if conn.filled == conn.rx.len() {
            let mut bigger = vec![0; conn.rx.len() * 2].into_boxed_slice();
            bigger[..conn.filled].copy_from_slice(&conn.rx[..conn.filled]);
            conn.rx = bigger;
        }
        let free = &mut conn.rx[conn.filled..];
        let entry = opcode::Recv::new(types::Fixed(slot), free.as_mut_ptr(), free.len() as u32)
            .build()
            .user_data(ring::pack(Op::Recv, conn.generation, slot));
        conn.recv_in_flight = true;
        // SAFETY: `rx` is neither replaced nor dropped while `recv_in_flight` is set.
        unsafe { self.ring.push(&entry) }
    }

    fn on_recv(&mut self, slot: u32, result: i32) -> io::Result<()> {
        let conn = self.conn(slot);
        conn.recv_in_flight = false;
        if result <= 0 {
            conn.closing = true;
            return Ok(());
        }
        conn.filled += result as usize;
        let mut rx = std::mem::take(&mut conn.rx);
        let filled = conn.filled;
        let consumed = self.handle_frames(slot, &rx[..filled]);
        rx.copy_within(consumed..filled, 0);
        let conn = self.conn(slot);
        conn.rx = rx;
        conn.filled = filled - consumed;
        if !conn.paused && !conn.closing {
            self.submit_recv(slot)?;
        }
        Ok(())
    }

    /// Handles every whole frame in `input`; returns the bytes consumed.
    fn handle_frames(&mut self, slot: u32, input: &[u8]) -> usize {
        let mut consumed = 0;
        while let Some((header, body)) = frame_len(&input[consumed..]) {
            let frame = &input[consumed..consumed + header + body];
            consumed += header + body;
            self.handle_frame(slot, frame, header);
            if self.conn(slot).closing {
                break;
            }
        }
        consumed
    }

    fn handle_frame(&mut self, slot: u32, frame: &[u8], header: usize) {
        let body = &frame[header..];
        let packet_id =
            |body: &[u8]| [body.first().copied().unwrap_or(0), body.get(1).copied().unwrap_or(0)];
        match frame[0] >> 4 {
            1 => self.reply(slot, &[0x20, 2, 0, 0]),
            3 => self.on_publish(slot, frame, header),
            5 => {
                let [high, low] = packet_id(body);
                self.reply(slot, &[0x62, 2, high, low]);
            }
            6 => {
                let [high, low] = packet_id(body);
                self.reply(slot, &[0x70, 2, high, low]);
            }
            8 => self.on_subscribe(slot, body),
            10 => {
                let [high, low] = packet_id(body);
                self.reply(slot, &[0xB0, 2, high, low]);
            }
            12 => self.reply(slot, &[0xD0, 0]),
            14 => self.conn(slot).closing = true,
            _ => {} // PUBACK, PUBCOMP from subscribers: nothing to do.
        }
    }

    fn reply(&mut self, slot: u32, bytes: &[u8]) {
        self.conn(slot).tx.extend_from_slice(bytes);
        self.mark_dirty(slot);
    }

    fn mark_dirty(&mut self, slot: u32) {
        let conn = self.conn(slot);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
    }

    fn on_publish(&mut self, slot: u32, frame: &[u8], header: usize) {
        let body = &frame[header..];
        if body.len() < 2 {
            self.conn(slot).closing = true;
            return;
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let qos = (frame[0] >> 1) & 3;
        let Some(topic) = body.get(2..2 + topic_len) else {
            self.conn(slot).closing = true;
            return;
        };
        if qos > 0 {
            let Some(id) = body.get(2 + topic_len..4 + topic_len) else {
                self.conn(slot).closing = true;
                return;
            };
            let kind = if qos == 1 { 0x40 } else { 0x50 };
            self.reply(slot, &[kind, 2, id[0], id[1]]);
        }
        self.stats.publishes_in += 1;
        if self.drop_one_in > 0 && self.stats.publishes_in % self.drop_one_in == 0 {
            self.stats.dropped += 1;
            return;
        }
        let Some(subscribers) = self.topics.get(topic) else { return };
        let subscribers = subscribers.clone();
        for (target, generation) in subscribers {
            if !self.is_current(target, generation) {
                continue;
            }
            let queue_bytes_max = self.queue_bytes_max;
            let conn = self.conn(target);
            conn.tx.extend_from_slice(frame);
            let full = conn.tx.len() > queue_bytes_max && target != slot;
            self.stats.forwarded += 1;
            self.mark_dirty(target);
            if full {
                self.pause(slot, target);
            }
        }
    }

    fn pause(&mut self, publisher: u32, full: u32) {
        let generation = self.conn(publisher).generation;
        let waiters = &mut self.conn(full).waiters;
        if !waiters.contains(&(publisher, generation)) {
            waiters.push((publisher, generation));
        }
        let conn = self.conn(publisher);
        if !conn.paused {
            conn.paused = true;
            self.stats.pauses += 1;
        }
    }

    fn on_subscribe(&mut self, slot: u32, body: &[u8]) {
        let Some(id) = body.get(0..2) else {
            self.conn(slot).closing = true;
            return;
        };
        let mut suback = vec![0x90, 0, id[0], id[1]];
        let mut rest = &body[2..];
        let generation = self.conn(slot).generation;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let (Some(filter), Some(&qos)) = (rest.get(2..2 + len), rest.get(2 + len)) else {
                break;
            };
            self.topics.entry(filter.to_vec()).or_default().push((slot, generation));
            self.conn(slot).topics.push(filter.to_vec());
            suback.push(qos & 3);
            rest = &rest[3 + len..];
        }
        suback[1] = (suback.len() - 2) as u8;
        self.reply(slot, &suback);
    }

    fn flush(&mut self) -> io::Result<()> {
        while let Some(slot) = self.dirty.pop() {
            let Some(conn) = self.conns[slot as usize].as_mut() else { continue };
            conn.dirty = false;
            if conn.send_in_flight || conn.tx.is_empty() {
                continue;
            }
            std::mem::swap(&mut conn.tx, &mut conn.sending);
            conn.send_offset = 0;
            self.submit_send(slot)?;
        }
        Ok(())
    }

    fn submit_send(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.conn(slot);
        let remaining = &conn.sending[conn.send_offset..];
        let entry =
            opcode::Send::new(types::Fixed(slot), remaining.as_ptr(), remaining.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ring::pack(Op::Send, conn.generation, slot));
        conn.send_in_flight = true;
        // SAFETY: `sending` is untouched while `send_in_flight` is set.
        unsafe { self.ring.push(&entry) }
    }

    fn on_send(&mut self, slot: u32, result: i32) -> io::Result<()> {
        let queue_bytes_max = self.queue_bytes_max;
        let conn = self.conn(slot);
        conn.send_in_flight = false;
        if result < 0 {
            conn.closing = true;
            conn.sending.clear();
            return Ok(());
        }
        conn.send_offset += result as usize;
        if conn.send_offset < conn.sending.len() {
            return self.submit_send(slot);
        }
        conn.sending.clear();
        let resume = conn.tx.len() <= queue_bytes_max / 2;
        let waiters = if resume { std::mem::take(&mut conn.waiters) } else { Vec::new() };
        self.mark_dirty(slot);
        for (waiter, generation) in waiters {
            if self.is_current(waiter, generation) {
                let waiter_conn = self.conn(waiter);
                if waiter_conn.paused && !waiter_conn.closing {
                    waiter_conn.paused = false;
                    if !waiter_conn.recv_in_flight {
                        self.submit_recv(waiter)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A closing connection is closed once no operation references its buffers.
    fn close_if_done(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.conn(slot);
        if !conn.closing || conn.recv_in_flight || conn.send_in_flight {
            return Ok(());
        }
        let conn = self.conns[slot as usize].take().expect("checked above");
        for topic in conn.topics {
            if let Some(subscribers) = self.topics.get_mut(&topic) {
                subscribers.retain(|&(s, g)| (s, g) != (slot, conn.generation));
            }
        }
        let entry = opcode::Close::new(types::Fixed(slot)).build().user_data(ring::pack(
            Op::Close,
            conn.generation,
            slot,
        ));
        // SAFETY: closing a direct descriptor references no memory of ours.
        unsafe { self.ring.push(&entry) }
    }

    /// Shuts every connection down and waits (bounded) for their operations to end; leaks
    /// the buffers of any that do not.
    fn shutdown(&mut self) -> io::Result<()> {
        for slot in 0..self.conns.len() as u32 {
            if let Some(conn) = self.conns[slot as usize].as_mut() {
                conn.closing = true;
                let entry = opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_RDWR)
                    .build()
                    .user_data(ring::pack(Op::Shutdown, conn.generation, slot));
                // SAFETY: a shutdown references no memory of ours.
                unsafe { self.ring.push(&entry) }?;
                self.close_if_done(slot)?;
            }
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.conns.iter().any(Option::is_some) && Instant::now() < deadline {
            self.ring.submit(1, Some(Duration::from_millis(10)))?;
            self.dispatch()?;
        }
        if self.conns.iter().any(Option::is_some) {
            std::mem::forget(std::mem::take(&mut self.conns));
        }
        Ok(())
    }
}

/// (fixed header bytes, remaining length) of the frame at the front of `input`, if whole.
fn frame_len(input: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (index, &byte) in input.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7F) << (7 * (index - 1));
        if byte & 0x80 == 0 {
            let header = index + 1;
            return (input.len() >= header + length).then_some((header, length));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_waits_for_whole_frames() {
        assert_eq!(frame_len(&[0xC0, 0]), Some((2, 0)));
        assert_eq!(frame_len(&[0x30, 3, 0, 1]), None, "body incomplete");
        assert_eq!(frame_len(&[0x30]), None, "no length yet");
        let mut long = vec![0x30, 0x80, 0x01];
        assert_eq!(frame_len(&long), None);
        long.extend(vec![0; 128]);
        assert_eq!(frame_len(&long), Some((3, 128)));
    }
}
