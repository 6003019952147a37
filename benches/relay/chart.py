#!/usr/bin/env python3
"""Draws the scaling curves of benches/relay/scaling.sh as SVG charts, from its results file (stdlib only).

    python3 benches/relay/chart.py RESULTS.jsonl [OUT_DIR]

For each family of points (client connections, destinations, line length) it writes two charts: input lines per
second (median over rounds) of the harness ceiling, polymur and carbon-c-relay, and polymur's and carbon-c-relay's
CPU-seconds per million lines. Labels are "family=value/relay", as scaling.sh writes them.
"""

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 80, 150, 40, 60
COLOURS = {"direct": "#888888", "polymur": "#1f77b4", "polymur-vs-ccr": "#1f77b4", "ccr": "#d62728"}
NAMES = {"direct": "ceiling (direct)", "polymur": "polymur", "ccr": "carbon-c-relay tuned"}
TITLES = {"conns": "client connections", "dests": "destinations", "line_bytes": "line length (bytes)"}


def load(path):
    """{family: {relay: {x: [runs]}}} from a relaybench results file."""
    families = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        run = json.loads(line)
        point, _, relay = run["label"].partition("/")
        family, _, value = point.partition("=")
        if family in TITLES and run.get("ok"):
            families[family][relay][float(value)].append(run)
    return families


def medians(points, key):
    return sorted(
        (x, statistics.median(r[key] for r in runs))
        for x, runs in points.items()
        if all(r.get(key) is not None for r in runs)
    )


def svg_chart(title, x_label, y_label, series):
    """An SVG line chart with a log x axis; `series` is [(name, colour, [(x, y), ...])]."""
    xs = [x for _, _, points in series for x, _ in points]
    ys = [y for _, _, points in series for _, y in points]
    if not xs:
        return None
    x_low, x_high = math.log10(min(xs)), math.log10(max(xs))
    if x_high == x_low:
        x_high += 1
    y_high = max(ys) * 1.1 or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + (math.log10(x) - x_low) / (x_high - x_low) * plot_w

    def py(y):
        return TOP + plot_h - y / y_high * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        f'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">{x_label} (log scale)</text>',
        f'<text x="15" y="{TOP + plot_h / 2}" text-anchor="middle" transform="rotate(-90 15 {TOP + plot_h / 2})">'
        f"{y_label}</text>",
    ]
    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{x:g}</text>')
    for i in range(6):
        y = y_high * i / 5
        out.append(f'<text x="{LEFT - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
        out.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{LEFT + plot_w}" y2="{py(y):.1f}" stroke="#eeeeee"/>')
    for index, (name, colour, points) in enumerate(series):
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        legend_y = TOP + 10 + index * 18
        out.append(f'<rect x="{LEFT + plot_w + 15}" y="{legend_y - 9}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{LEFT + plot_w + 32}" y="{legend_y + 1}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    out_dir = Path(sys.argv[2] if len(sys.argv) > 2 else Path(results).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    for family, relays in sorted(load(results).items()):
        throughput = []
        cpu = []
        for relay in ("direct", "polymur", "ccr"):
            if relay not in relays:
                continue
            name = NAMES[relay]
            rate = [(x, y / 1e6) for x, y in medians(relays[relay], "lines_per_s")]
            throughput.append((name, COLOURS[relay], rate))
            if relay != "direct":
                cpu.append((name, COLOURS[relay], medians(relays[relay], "relay_cpu_s_per_mline")))
        for kind, series, y_label in (
            ("throughput", throughput, "M input lines/s"),
            ("cpu", cpu, "CPU-s per M lines"),
        ):
            chart = svg_chart(f"{y_label} against {TITLES[family]}", TITLES[family], y_label, series)
            if chart:
                path = out_dir / f"scaling-{family}-{kind}.svg"
                path.write_text(chart)
                print(path)


if __name__ == "__main__":
    main()
