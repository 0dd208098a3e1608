#!/usr/bin/env python3
"""Clients and probes for scripts/slow-consumer.sh and scripts/soak.sh (not used in CI).

Plain sockets and hand-encoded MQTT 3.1.1, so nothing here needs a library:

  wait-ready PORT                  until a CONNECT is answered with CONNACK (or 10 s)
  stalled PORT QOS FILTER ID       connects (CleanSession=0), subscribes, then never reads
                                   again: the slow consumer. Runs until killed.
  reader PORT QOS FILTER ID        connects, subscribes, reads and discards everything; the
                                   slow consumer's control (QoS 0 only: it answers nothing).
                                   Runs until killed.
  churn PORT RATE SECONDS          RATE connections per second for SECONDS, each one: CONNECT,
                                   sometimes SUBSCRIBE or a QoS 1 PUBLISH, then a DISCONNECT,
                                   a plain close or a reset; prints the rate reached each 10 s
  sample PID OUT PHASEFILE SECS [BUFFER_KIB]
                                   every SECS: time, phase, broker RSS (KiB), open fds, RSS
                                   (KiB) of the receive-buffer pools (BUFFER_KIB each,
                                   default 65536) and their count; until PID exits
  sys PORT OUT                     subscribes to $SYS/broker/# and appends "time topic value"
                                   lines to OUT; until killed
"""

import os
import random
import socket
import struct
import sys
import threading
import time


def utf8(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def remaining_length(length):
    out = bytearray()
    while True:
        digit, length = length % 128, length // 128
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def packet(first_byte, body):
    return bytes([first_byte]) + remaining_length(len(body)) + body


def connect_packet(client_id, clean=True, keepalive=0):
    flags = 0x02 if clean else 0x00
    return packet(0x10, utf8("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + utf8(client_id))


def subscribe_packet(packet_id, topic_filter, qos):
    return packet(0x82, struct.pack(">H", packet_id) + utf8(topic_filter) + bytes([qos]))


def publish_packet(topic, payload, qos=0, packet_id=1):
    body = utf8(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
    return packet(0x30 | (qos << 1), body)


DISCONNECT = bytes([0xE0, 0])


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def open_session(port, client_id, clean=True, timeout=10.0):
    """A connected socket whose CONNACK (and nothing more) has been read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(connect_packet(client_id, clean))
    connack = read_exactly(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK {connack.hex()}")
    return sock


def wait_ready(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            sock = open_session(int(port), f"ready-{os.getpid()}", timeout=1)
            sock.sendall(DISCONNECT)
            sock.close()
            return 0
        except OSError:
            time.sleep(0.05)
    print(f"no CONNACK on port {port} within 10 s", file=sys.stderr)
    return 1


def stalled(port, qos, topic_filter, client_id):
    """The slow consumer: reads up to its SUBACK (exactly those bytes), then nothing."""
    sock = open_session(int(port), client_id, clean=False)
    sock.sendall(subscribe_packet(1, topic_filter, int(qos)))
    # The server may send matching PUBLISHes before the SUBACK (MQTT 3.1.1, 3.8.4): skip them.
    while True:
        first = read_exactly(sock, 1)[0]
        length, shift = 0, 0
        while True:
            byte = read_exactly(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = read_exactly(sock, length)
        if first == 0x90:
            break
    if body[2] == 0x80:
        raise ConnectionError(f"SUBACK {body.hex()}")
    print(f"{time.time():.3f} stalled consumer subscribed to {topic_filter} at QoS {qos}; reading nothing from now on", flush=True)
    while True:  # Killed by the script at the end of the phase.
        time.sleep(1)


def reader(port, qos, topic_filter, client_id):
    """The control for the slow consumer: the same subscription, read as fast as it comes
    (and thrown away; at QoS 0 nothing needs an answer). Runs until killed."""
    sock = open_session(int(port), client_id, clean=True)
    sock.sendall(subscribe_packet(1, topic_filter, int(qos)))
    print(f"{time.time():.3f} reader subscribed to {topic_filter} at QoS {qos}", flush=True)
    sock.settimeout(None)
    while sock.recv(1 << 20):
        pass
    return 0


def churn_one(port, rng, serial, counts):
    """One short-lived connection, its shape drawn from `rng`."""
    persistent = rng.random() < 0.1
    # Persistent sessions reuse 100 ids, so the sessions they leave behind stay bounded.
    client_id = f"churn-p{rng.randrange(100)}" if persistent else f"churn-{os.getpid()}-{serial}"
    sock = open_session(port, client_id, clean=not persistent)
    roll = rng.random()
    if roll < 0.3:
        sock.sendall(subscribe_packet(1, f"soak/churn/{serial % 50}", 1))
        read_exactly(sock, 5)
        counts["subscribed"] += 1
    elif roll < 0.4:
        sock.sendall(publish_packet("soak/churn/x", b"x" * 32, qos=1, packet_id=1))
        read_exactly(sock, 4)  # PUBACK
        counts["published"] += 1
    end = rng.random()
    if end < 0.6:
        sock.sendall(DISCONNECT)
        counts["disconnect"] += 1
    elif end < 0.8:
        counts["close"] += 1  # No DISCONNECT: the will-less client just goes.
    else:
        # A reset: SO_LINGER 0 makes close() send RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        counts["reset"] += 1
    sock.close()


def churn(port, rate, seconds):
    port, rate, seconds = int(port), float(rate), float(seconds)
    threads = 8
    counts = {"connects": 0, "failed": 0, "subscribed": 0, "published": 0, "disconnect": 0, "close": 0, "reset": 0}
    lock = threading.Lock()
    start = time.time()
    end = start + seconds

    def worker(index):
        rng = random.Random(index)
        local = dict.fromkeys(counts, 0)
        serial = index
        next_at = start + index / rate
        while True:
            now = time.time()
            if now >= end:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at += threads / rate
            try:
                churn_one(port, rng, serial, local)
                local["connects"] += 1
            except OSError:
                local["failed"] += 1
            serial += threads
            if local["connects"] % 200 == 0:
                with lock:
                    for key, value in local.items():
                        counts[key] += value
                local = dict.fromkeys(counts, 0)
        with lock:
            for key, value in local.items():
                counts[key] += value

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    last, last_at = 0, start
    while any(thread.is_alive() for thread in pool):
        time.sleep(min(10, max(0.1, end - time.time() + 0.5)))
        with lock:
            done = counts["connects"]
        now = time.time()
        print(f"{now:.0f} churn: {(done - last) / (now - last_at):.0f} connects/s, {done} so far, {counts['failed']} failed", flush=True)
        last, last_at = done, now
    for thread in pool:
        thread.join()
    elapsed = min(time.time(), end) - start
    print(f"churn total: {counts} in {elapsed:.0f} s = {counts['connects'] / elapsed:.0f} connects/s", flush=True)
    return 0


def buffer_rss(pid, buffer_kib, pools_max=2):
    """RSS (KiB) of the workers' receive-buffer pools, and how many pools that is. Each
    worker maps one anonymous pool of recv_buffers x recv_buffer_bytes (`runtime/bufring.rs`),
    whose pages the kernel touches only as receives fill them; the kernel merges adjacent
    pools into one mapping, so a mapping of 1..=pools_max times the pool size counts (the
    allocator's arenas are far larger: mimalloc reserves 1 GiB)."""
    rss, pools, size = 0, 0, None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size and size % buffer_kib == 0 \
                    and size // buffer_kib <= pools_max:
                rss += int(line.split()[1])
                pools += size // buffer_kib
    return rss, pools


def sample(pid, out, phase_file, interval, buffer_kib="65536"):
    """Lines of: time, phase, RSS KiB, open fds, RSS KiB of the receive-buffer pools, pools."""
    interval, buffer_kib = float(interval), int(buffer_kib)
    with open(out, "a") as sink:
        while True:
            try:
                with open(f"/proc/{pid}/status") as status:
                    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                buffers, pools = buffer_rss(pid, buffer_kib)
            except (OSError, StopIteration):
                return 0
            try:
                with open(phase_file) as f:
                    phase = f.read().strip() or "-"
            except OSError:
                phase = "-"
            sink.write(f"{time.time():.3f} {phase} {rss} {fds} {buffers} {pools}\n")
            sink.flush()
            time.sleep(interval)


def sys_topics(port, out):
    sock = open_session(int(port), f"sys-monitor-{os.getpid()}", clean=True)
    sock.sendall(subscribe_packet(1, "$SYS/broker/#", 0))
    buffer = b""
    sock.settimeout(None)
    with open(out, "a") as sink:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return 0
            buffer += chunk
            while len(buffer) >= 2:
                length, shift, at = 0, 0, 1
                while at < len(buffer):
                    byte = buffer[at]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    at += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if len(buffer) < at + length:
                    break
                first, body = buffer[0], buffer[at : at + length]
                buffer = buffer[at + length :]
                if first >> 4 == 3:  # PUBLISH, QoS 0
                    topic_length = struct.unpack(">H", body[:2])[0]
                    topic = body[2 : 2 + topic_length].decode()
                    value = body[2 + topic_length :].decode(errors="replace")
                    sink.write(f"{time.time():.3f} {topic.replace(' ', '_')} {value.split()[0] if value else ''}\n")
                    sink.flush()


COMMANDS = {"wait-ready": wait_ready, "stalled": stalled, "reader": reader, "churn": churn, "sample": sample, "sys": sys_topics}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
