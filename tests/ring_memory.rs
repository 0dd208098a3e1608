//! A ring's fixed memory (issue 6): what one more ring set up at start adds to an idle
//! broker's RSS, measured on the real binary. A worker owns up to `rings_per_worker_max`
//! rings of 20,000-slot direct file tables, and `scripts/million.sh` sets up every ring a run
//! needs at start, so this cost is paid per ring before any connection comes.
//!
//! What a ring may cost: its SQ and CQ mappings (1024 and 32,768 entries for a further ring
//! at the defaults: 0.57 MiB) and a page of descriptors for each of its provided-buffer
//! rings; no connection-table entry for a slot never used (entries come in chunks on first
//! use), no receive buffer before the kernel writes one. Until session 6 it was ~2.7 MB: a
//! 72-byte entry for each of the 20,000 slots (1.44 MB) and the first ring's 1.3 MiB SQ/CQ.
//!
//! The broker is started twice, idle, with one worker: with 1 ring and with 9 set up at
//! start (the same configuration otherwise), and the difference of the two RSS figures over
//! the 8 extra rings is bounded. Both brokers are separate processes: the test harness's own
//! memory is in neither figure.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Extra rings in the second broker.
const EXTRA_RINGS: u16 = 8;
/// The bound per ring: 0.57 MiB of SQ/CQ and a descriptor page per buffer ring, with room for the
/// allocator's rounding; ~2.7 MB before the cuts, so the old layout fails it.
const RING_RSS_BYTES_MAX: i64 = 1 << 20;

/// An idle broker process; killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ringmq` with one worker and `rings` rings set up at start, waits until it accepts
/// connections (every ring is set up before the worker runs), and returns its RSS in bytes.
fn idle_rss_bytes(rings: u16) -> i64 {
    // A port the kernel just handed out and released; another process could take it in
    // between, which would show as a start-up failure, not a false pass.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let rings = rings.to_string();
    let mut broker = Broker(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--workers", "1", "--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--file-table-slots", "20000", "--rings-per-worker-max", &rings])
            .args(["--rings-per-worker-start", &rings])
            // `scripts/million.sh`'s receive buffers: 256 x 16 KiB on the first ring.
            .args(["--recv-buffers", "256", "--recv-buffer-bytes", "16384"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringmq"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(broker.0.try_wait().expect("status").is_none(), "the broker exited");
        assert!(Instant::now() < deadline, "the broker did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The probe connection above is closed; let the broker settle after it.
    std::thread::sleep(Duration::from_millis(300));
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.0.id()))
        .expect("the broker's /proc status");
    let rss_kib: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB");
    rss_kib * 1024
}

#[test]
fn a_ring_set_up_at_start_costs_at_most_a_mebibyte() {
    let one = idle_rss_bytes(1);
    let many = idle_rss_bytes(1 + EXTRA_RINGS);
    let per_ring = (many - one) / i64::from(EXTRA_RINGS);
    eprintln!(
        "idle RSS: {} KiB with 1 ring, {} KiB with {}: {} KiB per ring",
        one / 1024,
        many / 1024,
        1 + EXTRA_RINGS,
        per_ring / 1024
    );
    assert!(per_ring > 0, "more rings cost nothing? ({one} B, then {many} B)");
    assert!(
        per_ring <= RING_RSS_BYTES_MAX,
        "a ring costs {per_ring} B at start, over {RING_RSS_BYTES_MAX} B"
    );
}
