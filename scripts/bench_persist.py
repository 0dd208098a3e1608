#!/usr/bin/env python3
"""The persistence benchmarks; run through scripts/bench-persist.sh (which builds and documents
the modes). Standard library only; reuses scripts/compare/run.py's broker and bench helpers."""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.environ["ROOT"]
OUT = os.environ["OUT"]
sys.path.insert(0, os.path.join(ROOT, "scripts", "compare"))
import run as compare  # noqa: E402  pylint: disable=wrong-import-position

BIN_DIR = os.environ.get("BIN_DIR") or os.path.join(ROOT, "target", "release")
RINGMQ = os.path.join(BIN_DIR, "ringmq")
BENCH = os.path.join(BIN_DIR, "ringmq-bench")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BROKER_CPU, BENCH_CPU = "0", "1"


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def dir_bytes(path):
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(parent, name))
            except OSError:
                pass
    return total


def ringmq_argv(port, data_dir, policy, workers=1):
    argv = [RINGMQ, "--bind", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--max-connections", "20000", "--max-inflight-messages", "100",
            "--max-queued-messages", "1000000", "--max-queued-bytes", "1073741824",
            "--log-level", "warn"]
    if policy != "off":
        argv += ["--persistence", "true", "--persistence-dir", data_dir,
                 "--persistence-fsync", policy, "--persistence-fsync-interval-millis", "1000"]
    return argv


def mosquitto_conf(port, data_dir):
    # Started as root, Mosquitto drops to its own user: its database directory must be its.
    if os.getuid() == 0:
        try:
            shutil.chown(data_dir, "mosquitto", "mosquitto")
        except (LookupError, OSError):
            pass
    path = os.path.join(OUT, f"mosquitto-{port}.conf")
    with open(path, "w") as conf:
        conf.write(f"""listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 1000000
max_inflight_messages 100
max_connections -1
persistence true
persistence_location {data_dir}/
autosave_interval 1800
log_dest stderr
log_type error
log_type warning
""")
    return path


def throughput():
    runs, duration, pairs = int(os.environ["RUNS"]), os.environ["DURATION"], os.environ["PAIRS"]
    scenario = dict(id="persist_unicast_q1", args=[
        "pubsub", "--pattern", "pairs", "-n", pairs, "--qos", "1", "--rate", "0", "--window", "64",
        "--e2e-window", "256", "--duration", duration, "--payload-bytes", "64", "--drain", "3",
        "--persistent-sessions"])
    brokers = [("ringmq-off", "off"), ("ringmq-batch", "batch"),
               ("ringmq-interval", "interval"), ("ringmq-never", "never"), ("mosquitto", None)]
    info = compare.machine_info()
    info.update(command=os.environ["COMMAND"], date_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                scenario=scenario["args"])
    raw = {name: [] for name, _ in brokers}
    port = 18850
    for rnd in range(runs):
        for name, policy in brokers:
            port += 1
            data_dir = os.path.join(OUT, f"data-{name}-{rnd}")
            os.makedirs(data_dir, exist_ok=True)
            if policy is None:
                argv = [MOSQUITTO, "-c", mosquitto_conf(port, data_dir)]
            else:
                argv = ringmq_argv(port, data_dir, policy)
            broker = compare.Broker(name, ["taskset", "-c", BROKER_CPU] + argv, port,
                                    os.path.join(OUT, f"{name}.log"))
            broker.start()
            try:
                result = compare.run_bench(BENCH, BENCH_CPU, scenario, port, broker)
            finally:
                broker.stop()
            summary = compare.summarize(result, "throughput")
            summary["data_bytes_after_stop"] = dir_bytes(data_dir)
            summary["loadavg"] = loadavg()
            raw[name].append(summary)
            shutil.rmtree(data_dir, ignore_errors=True)
            print(f"round {rnd + 1} {name}: {summary.get('delivery_rate')} msg/s ok={summary['ok']} "
                  f"p99={summary.get('p99_us')} us load={summary['loadavg']}", flush=True)
    info["loadavg_end"] = loadavg()
    medians = {name: {key: compare.median_of(samples, key) for key in
                      ("delivery_rate", "p50_us", "p99_us", "broker_cpu_secs", "rss_peak_mib")}
               for name, samples in raw.items()}
    json.dump(dict(machine=info, raw=raw, medians=medians), open(os.path.join(OUT, "results.json"), "w"), indent=1)
    base = medians["ringmq-off"]["delivery_rate"] or 0
    lines = [f"`{info['command']}` — {info['date_utc']}, {info['cpus']} cores ({info['cpu_model']}), "
             f"load average {' '.join(info['loadavg_start'])} at start, {' '.join(info['loadavg_end'])} at end; "
             f"median of {runs}.", "",
             "| broker | delivered msg/s | vs ringmq off | p50 us | p99 us | broker CPU s | RSS MiB | valid runs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, _ in brokers:
        m = medians[name]
        valid = sum(1 for s in raw[name] if s.get("ok"))
        rate = m["delivery_rate"]
        ratio = f"{rate / base:.2f}" if rate and base else "-"
        fmt = lambda v, f="{:.0f}": f.format(v) if v is not None else "-"  # noqa: E731
        lines.append(f"| {name} | {fmt(rate)} | {ratio} | {fmt(m['p50_us'])} | {fmt(m['p99_us'])} | "
                     f"{fmt(m['broker_cpu_secs'], '{:.2f}')} | {fmt(m['rss_peak_mib'], '{:.1f}')} | {valid}/{runs} |")
    open(os.path.join(OUT, "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def mqtt_resume(port, client_id, timeout_secs=120.0):
    """CONNECT with CleanSession=0 as `client_id`; returns CONNACK's session-present flag."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_secs) as sock:
        sock.sendall(packet)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                raise RuntimeError("closed before CONNACK")
            connack += chunk
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    assert connack[0] == 0x20 and connack[3] == 0, f"CONNACK {connack.hex()}"
    return bool(connack[2] & 1)


def rss_mib(pid):
    return compare.rss_kib(pid) / 1024


def restart():
    sessions, wave, workers = int(os.environ["SESSIONS"]), int(os.environ["WAVE"]), int(os.environ["WORKERS"])
    port = 18870
    data_dir = os.path.join(OUT, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    argv = ringmq_argv(port, data_dir, "batch", workers)
    argv[argv.index("--log-level") + 1] = "info"
    argv[argv.index("--max-connections") + 1] = str(max(20000, wave * 2))
    log_path = os.path.join(OUT, "ringmq.log")
    info = dict(command=os.environ["COMMAND"], date_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                loadavg_start=loadavg(), sessions_planned=sessions, wave=wave, workers=workers)
    broker = compare.Broker("ringmq", argv, port, log_path)
    broker.start()
    created, waves, t0 = 0, 0, time.time()
    while created < sessions:
        count = min(wave, sessions - created)
        done = subprocess.run(
            [BENCH, "--json", "--quiet", "sub", "--subs", str(count), "--persistent-sessions",
             "--qos", "1", "--client-id-prefix", f"w{waves}", "--topic-prefix", f"w{waves}",
             "--duration", "0.1", "--drain", "0", "--connect-timeout", "120",
             "--ring-files", str(max(16384, count + 1000)), "--source", "127.1.0.1-127.1.0.100",
             "--port", str(port)], capture_output=True, text=True, timeout=600)
        report = json.loads(done.stdout)
        ready = report["connections"]["ready"]
        if ready != count:
            raise RuntimeError(f"wave {waves}: {ready}/{count} ready: {done.stderr[-1500:]}")
        created += count
        waves += 1
        if waves % 10 == 0:
            print(f"{created} sessions after {time.time() - t0:.0f} s, broker RSS {rss_mib(broker.proc.pid):.0f} MiB", flush=True)
    info.update(create_secs=round(time.time() - t0, 1), sessions_created=created, waves=waves)
    time.sleep(1.5)  # the last SUBACKs are durable before they are sent; the close records follow
    info["rss_before_kill_mib"] = round(rss_mib(broker.proc.pid), 1)
    info["journal_bytes_before_kill"] = dir_bytes(data_dir)
    broker.proc.kill()
    broker.proc.wait()
    if os.environ.get("KEEP_DATA"):  # a copy of the journal at the kill, for experiments
        shutil.rmtree(os.environ["KEEP_DATA"], ignore_errors=True)
        shutil.copytree(data_dir, os.environ["KEEP_DATA"])
    log_start = os.path.getsize(log_path)
    start = time.time()
    broker.proc = subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
    # The listening sockets exist before recovery ends (the kernel queues connections), so
    # "served" is what counts: a first-wave client resumes its session (CONNACK, present).
    while True:
        try:
            present = mqtt_resume(port, "w0-0")
            break
        except OSError:
            if broker.proc.poll() is not None:
                raise RuntimeError(f"ringmq exited; see {log_path}")
            time.sleep(0.05)
    info["restart_served_secs"] = round(time.time() - start, 2)
    info["first_session_present"] = present
    info["rss_after_restart_mib"] = round(rss_mib(broker.proc.pid), 1)
    # And once the start-up's transient memory had time to go back (allocator purge delays).
    time.sleep(float(os.environ.get("SETTLE_SECS", "5")))
    info["rss_after_restart_settled_mib"] = round(rss_mib(broker.proc.pid), 1)
    info["journal_bytes_after_restart"] = dir_bytes(data_dir)
    with open(log_path, errors="replace") as log:
        log.seek(log_start)
        info["recovered_log"] = [line.strip() for line in log if "persistence: recovered" in line][-1:]
    info["loadavg_end"] = loadavg()
    broker.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    json.dump(info, open(os.path.join(OUT, "results.json"), "w"), indent=1)
    lines = [f"`{info['command']}` — {info['date_utc']}, load average {' '.join(info['loadavg_start'])} "
             f"at start, {' '.join(info['loadavg_end'])} at end.", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()
              if key not in ("command", "date_utc", "loadavg_start", "loadavg_end")]
    open(os.path.join(OUT, "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    throughput() if os.environ["MODE"] == "throughput" else restart()
