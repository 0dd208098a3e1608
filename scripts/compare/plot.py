#!/usr/bin/env python3
"""Writes an SVG bar chart from compare results.json: delivered messages per broker CPU-second
per throughput scenario (left) and p99 latency of the fixed-rate scenarios (right), one bar per
broker. Standard library only.

Usage: plot.py results.json out.svg
"""

import json
import sys

COLORS = {"ringmq": "#d9480f", "mosquitto": "#1c7ed6", "rumqttd": "#37b24d", "relay": "#868e96"}
W, H, TOP, BOTTOM, LEFT = 960, 420, 50, 110, 70


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(x0, width, title, groups, names, key, unit, fmt):
    """groups: [(label, {name: medians})]; draws one group of bars per label."""
    out = []
    values = [g[1].get(n, {}).get(key) for g in groups for n in names]
    vmax = max([v for v in values if v] or [1]) * 1.15
    ph = H - TOP - BOTTOM
    out.append(f'<text x="{x0 + width / 2}" y="22" text-anchor="middle" font-size="14" '
               f'font-weight="bold">{esc(title)}</text>')
    out.append(f'<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{TOP + ph}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{TOP + ph}" x2="{x0 + width}" y2="{TOP + ph}" '
               f'stroke="#333"/>')
    for i in range(5):
        v = vmax * i / 4
        y = TOP + ph - ph * i / 4
        out.append(f'<line x1="{x0 - 4}" y1="{y}" x2="{x0 + width}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" font-size="10">'
                   f'{fmt(v)}</text>')
    out.append(f'<text x="{x0 - 52}" y="{TOP + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 {x0 - 52} {TOP + ph / 2})">{esc(unit)}</text>')
    gw = width / max(len(groups), 1)
    bw = gw * 0.8 / max(len(names), 1)
    for gi, (label, med) in enumerate(groups):
        gx = x0 + gi * gw + gw * 0.1
        for ni, n in enumerate(names):
            v = med.get(n, {}).get(key)
            if v is None:
                continue
            h = ph * v / vmax
            x = gx + ni * bw
            out.append(f'<rect x="{x:.1f}" y="{TOP + ph - h:.1f}" width="{bw - 2:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS.get(n, "#555")}"><title>{esc(n)}: '
                       f'{fmt(v)}</title></rect>')
            out.append(f'<text x="{x + bw / 2 - 1:.1f}" y="{TOP + ph - h - 3:.1f}" '
                       f'font-size="8" text-anchor="middle">{fmt(v)}</text>')
        lines = label.split(", ")
        for li, line in enumerate(lines):
            out.append(f'<text x="{gx + gw * 0.4:.1f}" y="{TOP + ph + 16 + li * 12}" '
                       f'font-size="10" text-anchor="middle">{esc(line)}</text>')
    return out


def main():
    res = json.load(open(sys.argv[1]))
    med = res["medians"]
    names = list(res["machine"]["brokers"])
    thr = [(s["title"].replace(", max rate", ""), med[s["id"]]) for s in res["scenarios"]
           if s["kind"] == "throughput"]
    lat = [(s["title"], med[s["id"]]) for s in res["scenarios"] if s["kind"] == "latency"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif"><rect width="{W}" height="{H}" fill="white"/>']
    thousands = lambda v: f"{v / 1000:,.0f}k" if v >= 10000 else f"{v:,.0f}"
    svg += panel(LEFT, 560, "Delivered messages per broker CPU-second (median)", thr, names,
                 "delivered_per_cpu_sec", "msgs / CPU-s", thousands)
    lat = [(label, {n: {"p99_ms": (m.get("p99_us") or 0) / 1000 or None}
                    for n, m in med_by.items()}) for label, med_by in lat]
    svg += panel(LEFT + 560 + 90, 220, "p99 latency, fixed rate", lat, names, "p99_ms",
                 "milliseconds", lambda v: f"{v:,.1f}" if v < 100 else f"{v:,.0f}")
    lx = LEFT
    for n in names:
        svg.append(f'<rect x="{lx}" y="{H - 22}" width="12" height="12" '
                   f'fill="{COLORS.get(n, "#555")}"/>')
        svg.append(f'<text x="{lx + 16}" y="{H - 12}" font-size="11">{esc(n)}</text>')
        lx += 110
    m = res["machine"]
    svg.append(f'<text x="{W - 10}" y="{H - 12}" font-size="10" text-anchor="end">'
               f'{esc(m["date_utc"])}, {m["cpus"]} vCPU, broker pinned to 1 core, '
               f'{m["runs"]} run(s)</text>')
    svg.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
