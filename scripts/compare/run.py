#!/usr/bin/env python3
"""Runs every scenario against every broker, N rounds, and writes results.json + results.md.

Called by scripts/compare.sh (which installs and builds). Each broker runs on its own port,
pinned to core BROKER_CPU; the load generator is pinned to BENCH_CPU. Per scenario run the
broker's CPU seconds are utime+stime from /proc/PID/stat read just before and just after the
ringmq-bench process (connection setup, publishing and drain included, for every broker alike);
RSS is sampled from /proc/PID/status while it runs (the peak is kept). The median over the
rounds is reported per (scenario, broker). Standard library only.
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout_secs=15.0):
    deadline = time.time() + timeout_secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Broker:
    def __init__(self, name, argv, port, log_path):
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, start_new_session=True)
        if not wait_port(self.port):
            self.stop()
            raise RuntimeError(f"{self.name} did not listen on {self.port}; see {self.log_path}")
        time.sleep(0.3)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def scenarios(quick):
    d = "2" if quick else "5"
    dl = "3" if quick else "8"
    common = ["--payload-bytes", "64", "--drain", "3"]
    # Max-rate runs use --e2e-window so a publisher stays a bounded number of messages
    # ahead of its subscribers: the run finds the sustainable rate instead of measuring how
    # a broker behaves with its queues overrun (which differs by policy, not by speed).
    return [
        dict(id="unicast_q0", title="unicast QoS 0, 100 pairs, max rate", kind="throughput",
             args=["pubsub", "--pattern", "pairs", "-n", "100", "--qos", "0", "--rate", "0",
                   "--e2e-window", "256", "--duration", d] + common),
        dict(id="unicast_q1", title="unicast QoS 1, 100 pairs, max rate", kind="throughput",
             args=["pubsub", "--pattern", "pairs", "-n", "100", "--qos", "1", "--rate", "0",
                   "--window", "64", "--e2e-window", "256", "--duration", d] + common),
        dict(id="fanout_q0", title="fan-out 1 -> 1000, QoS 0, max rate", kind="throughput",
             args=["pubsub", "--pattern", "fanout", "-n", "1000", "--qos", "0", "--rate", "0",
                   "--e2e-window", "64", "--duration", d] + common),
        dict(id="fanin_q0", title="fan-in 1000 -> 1, QoS 0, max rate", kind="throughput",
             args=["pubsub", "--pattern", "fanin", "-n", "1000", "--qos", "0", "--rate", "0",
                   "--e2e-window", "16", "--duration", d] + common),
        dict(id="latency_10k", title="1000 pairs at 10k msg/s, QoS 0", kind="latency",
             target_p99_us=2000,
             args=["pubsub", "--pattern", "pairs", "-n", "1000", "--qos", "0", "--rate", "10000",
                   "--duration", dl] + common),
        dict(id="latency_100k", title="1000 pairs at 100k msg/s, QoS 0", kind="latency",
             target_p99_us=20000,
             args=["pubsub", "--pattern", "pairs", "-n", "1000", "--qos", "0", "--rate", "100000",
                   "--duration", dl] + common),
        dict(id="idle_15k", title="idle: 15k subscribed connections", kind="idle",
             args=["sub", "--subs", "15000", "--duration", "3" if quick else "5", "--drain", "0",
                   "--connect-timeout", "60", "--ring-files", "16384"]),
    ]


def run_bench(bench, bench_cpu, scenario, port, broker):
    argv = ["taskset", "-c", bench_cpu, bench, "--json", "--quiet"] + scenario["args"] + [
        "--port", str(port), "--client-id-prefix", f"cmp-{broker.name}-{scenario['id']}"]
    rss_base = rss_kib(broker.proc.pid)
    rss_peak = [rss_base]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            try:
                rss_peak[0] = max(rss_peak[0], rss_kib(broker.proc.pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0 = cpu_secs(broker.proc.pid)
    t0 = time.time()
    sampler.start()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    wall = time.time() - t0
    stop.set()
    sampler.join()
    alive = broker.alive()
    cpu = cpu_secs(broker.proc.pid) - cpu0 if alive else None
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    return dict(argv=argv, rc=done.returncode, report=report, stderr_tail=done.stderr[-2000:],
                broker_cpu_secs=cpu, wall_secs=wall, rss_base_kib=rss_base,
                rss_peak_kib=rss_peak[0], broker_alive=alive)


def run_relay(bench, scenario):
    args = ["relay"] + scenario["args"][1:]
    # The relay thread and the bench worker share both cores (nothing else is running).
    argv = ["taskset", "-c", "0,1", bench, "--json", "--quiet"] + args
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    return dict(argv=argv, rc=done.returncode, report=report, stderr_tail=done.stderr[-2000:])


def summarize(run, kind):
    r = run["report"]
    if r is None:
        return dict(ok=False, error=run["stderr_tail"][-300:])
    m, c = r["messages"], r["connections"]
    # A run where not every connection came up measured a smaller pattern: not counted.
    out = dict(ok=run["rc"] == 0 and run.get("broker_alive", True) and c["ready"] == c["planned"],
               connections_ready=c["ready"], connections_planned=c["planned"],
               closed_unexpectedly=c["closed_unexpectedly"])
    cpu = run.get("broker_cpu_secs")
    if kind == "idle":
        conns = max(c["ready"], 1)
        out.update(connect_rate=c["connect_rate_per_sec"],
                   rss_peak_mib=run["rss_peak_kib"] / 1024,
                   rss_per_conn_kib=(run["rss_peak_kib"] - run["rss_base_kib"]) / conns,
                   broker_cpu_secs=cpu,
                   mqtt_connect_p99_us=(c["mqtt_connect_latency"] or {}).get("p99_us"))
        return out
    lat = r["latency"] or {}
    out.update(published=m["published"], delivered=m["unique"], lost=m["lost"],
               delivery_rate=m["delivery_rate_per_sec"], p50_us=lat.get("p50_us"),
               p99_us=lat.get("p99_us"), broker_cpu_secs=cpu,
               rss_peak_mib=run.get("rss_peak_kib", 0) / 1024,
               bench_busiest_worker=r["cpu"]["busiest_worker_running_cores"])
    if cpu:
        out["delivered_per_cpu_sec"] = m["unique"] / cpu
    if r["cpu"].get("relay"):
        relay_cpu = r["cpu"]["relay"]["user_secs"] + r["cpu"]["relay"]["system_secs"]
        if relay_cpu > 0:
            out["delivered_per_cpu_sec"] = m["unique"] / relay_cpu
    return out


def median_of(samples, key):
    vals = [s[key] for s in samples if s.get("ok") and s.get(key) is not None]
    return statistics.median(vals) if vals else None


def machine_info():
    load = open("/proc/loadavg").read().split()[:3]
    cpu_model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(open("/proc/meminfo").readline().split()[1])
    return dict(kernel=platform.release(), cpus=os.cpu_count(), cpu_model=cpu_model,
                mem_gib=round(mem_kib / 1024 / 1024, 1), loadavg_start=load)


def reprocess(out_dir):
    """Recomputes the medians and tables of an earlier results.json (e.g. after a change to
    what counts as a valid run)."""
    res = json.load(open(os.path.join(out_dir, "results.json")))
    for by_broker in list(res["raw"].values()) + [{"relay": v} for v in res["relay_raw"].values()]:
        for runs in by_broker.values():
            for r in runs:
                sm = r["summary"]
                if "connections_planned" in sm:
                    sm["ok"] = sm["ok"] and sm["connections_ready"] == sm["connections_planned"]
    write_results(out_dir, res["machine"], res["scenarios"], res["raw"], res["relay_raw"])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--reprocess":
        return reprocess(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--brokers-json", required=True, help="[{name, argv, port, version}]")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated scenario ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench-cpu", default="1")
    ap.add_argument("--command", default="")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    brokers_spec = json.loads(open(a.brokers_json).read())
    scen = scenarios(a.quick)
    if a.only:
        keep = set(a.only.split(","))
        unknown = keep - {s["id"] for s in scen}
        if unknown:
            ap.error("--only: unknown scenario id(s) %s; known: %s"
                     % (",".join(sorted(unknown)), ",".join(s["id"] for s in scen)))
        scen = [s for s in scen if s["id"] in keep]
    info = machine_info()
    info.update(date_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), runs=a.runs,
                quick=a.quick, command=a.command,
                brokers={b["name"]: dict(version=b["version"], argv=b["argv"],
                                         settings=b.get("settings", ""))
                         for b in brokers_spec})
    raw = {s["id"]: {b["name"]: [] for b in brokers_spec} for s in scen}
    # The relay runs the throughput scenarios (the ceiling) and the fixed-rate ones (this
    # machine's latency floor under its current load).
    relay_raw = {s["id"]: [] for s in scen if s["kind"] != "idle"}
    for rnd in range(a.runs):
        for s in scen:
            # The brokers take turns inside each round so slow drift in the shared machine's
            # load hits them all alike; each broker is fresh for each scenario run.
            for b in brokers_spec:
                broker = Broker(b["name"], b["argv"], b["port"],
                                os.path.join(a.out, f"{b['name']}.log"))
                try:
                    broker.start()
                except RuntimeError as error:
                    # A start failure (port taken, memory short on the shared machine) costs
                    # this run, not the whole comparison.
                    run = dict(argv=b["argv"], report=None, stderr_tail=str(error))
                else:
                    try:
                        run = run_bench(a.bench, a.bench_cpu, s, b["port"], broker)
                    finally:
                        broker.stop()
                sm = summarize(run, s["kind"])
                sm["loadavg"] = open("/proc/loadavg").read().split()[0]
                raw[s["id"]][b["name"]].append(dict(summary=sm, argv=run["argv"]))
                print(f"[round {rnd + 1}/{a.runs}] {s['id']:13} {b['name']:10} "
                      + json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                    for k, v in sm.items()}), flush=True)
            if s["id"] in relay_raw:
                run = run_relay(a.bench, s)
                sm = summarize(run, s["kind"])
                relay_raw[s["id"]].append(dict(summary=sm, argv=run["argv"]))
                print(f"[round {rnd + 1}/{a.runs}] {s['id']:13} relay      "
                      + json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                    for k, v in sm.items()}), flush=True)
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    write_results(a.out, info, scen, raw, relay_raw)


def write_results(out_dir, info, scen, raw, relay_raw):

    keys = ["delivered", "delivery_rate", "broker_cpu_secs", "delivered_per_cpu_sec", "p50_us",
            "p99_us", "lost", "rss_peak_mib", "connect_rate", "rss_per_conn_kib",
            "connections_ready", "closed_unexpectedly", "bench_busiest_worker"]
    medians = {}
    for s in scen:
        medians[s["id"]] = {}
        for name, runs in raw[s["id"]].items():
            samples = [r["summary"] for r in runs]
            medians[s["id"]][name] = {k: median_of(samples, k) for k in keys}
            medians[s["id"]][name]["ok_runs"] = sum(1 for x in samples if x.get("ok"))
        if s["id"] in relay_raw:
            samples = [r["summary"] for r in relay_raw[s["id"]]]
            medians[s["id"]]["relay"] = {k: median_of(samples, k) for k in keys}
            medians[s["id"]]["relay"]["ok_runs"] = sum(1 for x in samples if x.get("ok"))
    result = dict(machine=info, scenarios=[{k: v for k, v in s.items()} for s in scen],
                  medians=medians, raw=raw, relay_raw=relay_raw)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))


def fmt(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def markdown(res):
    med, scen = res["medians"], res["scenarios"]
    names = [n for n in res["machine"]["brokers"]]
    out = []
    out.append("| scenario | broker | delivered msg/s | of relay | broker CPU s | delivered per "
               "broker CPU-s | ringmq ratio | p50 us | p99 us | lost | peak RSS MiB | ok runs |")
    out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in scen:
        if s["kind"] == "idle":
            continue
        rows = names + (["relay"] if "relay" in med[s["id"]] else [])
        base = med[s["id"]].get("ringmq", {}).get("delivered_per_cpu_sec")
        relay_rate = med[s["id"]].get("relay", {}).get("delivery_rate")
        for n in rows:
            m = med[s["id"]][n]
            eff = m.get("delivered_per_cpu_sec")
            ratio = f"{base / eff:.2f}x" if base and eff and n not in ("ringmq", "relay") else ""
            cpu = "(relay thread)" if n == "relay" else fmt(m["broker_cpu_secs"], 2)
            rate = m["delivery_rate"]
            of_relay = f"{100 * rate / relay_rate:.0f}%" if rate and relay_rate else ""
            out.append(f"| {s['title']} | {n} | {fmt(rate)} | {of_relay} | {cpu} | {fmt(eff)} | "
                       f"{ratio} | {fmt(m['p50_us'])} | {fmt(m['p99_us'])} | {fmt(m['lost'])} | "
                       f"{fmt(m['rss_peak_mib'], 1)} | {m['ok_runs']} |")
    idle = [s for s in scen if s["kind"] == "idle"]
    if idle:
        out.append("")
        out.append("| idle scenario | broker | connections ready | connects/s | peak RSS MiB | "
                   "RSS per connection KiB | broker CPU s | ok runs |")
        out.append("|---|---|--:|--:|--:|--:|--:|--:|")
        for s in idle:
            for n in names:
                m = med[s["id"]][n]
                out.append(f"| {s['title']} | {n} | {fmt(m['connections_ready'])} | "
                           f"{fmt(m['connect_rate'])} | {fmt(m['rss_peak_mib'], 1)} | "
                           f"{fmt(m['rss_per_conn_kib'], 2)} | {fmt(m['broker_cpu_secs'], 2)} | "
                           f"{m['ok_runs']} |")
    out.append("")
    out.append("\"ringmq ratio\": ringmq's delivered-per-CPU-second divided by that broker's. "
               "\"of relay\": delivery rate as a share of the relay ceiling's (the relay row's "
               "per-CPU-second figure is per relay-thread CPU-second). Medians of each column "
               "separately; p50/p99 are publish-to-delivery.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
