#!/usr/bin/env python3
"""Render the accuracy-per-bit frontier (perplexity increase vs bits per weight) as SVG.

Usage:
  python3 scripts/frontier-chart.py [-o docs/frontier.svg] [--title MODEL=TEXT ...] FILE.tsv [FILE.tsv ...]

Input: tab-separated files, one header line naming (at least) the columns
  model  scheme  method  bits_per_weight  ppl  ppl_ratio  mean_kl  top1
one row per quantized build. bits_per_weight, ppl_ratio (quantized PPL / float PPL),
mean_kl and top1 (top-1 agreement, a fraction 0..1) must be finite numbers; ppl is
informational and may be `nan`. Blank lines are skipped. A later row with the same
(model, scheme, method) replaces an earlier one, across files too.

Output: one panel per model (order of first appearance), x = bits per weight (linear),
y = perplexity increase (ppl_ratio - 1) * 100 % (log scale; increases below 0.01 % are
drawn at 0.01 %, and those <= 0 hollow and marked "<=0"). Colour = method, marker shape = scheme family,
text label = the scheme's group (g32, g128, ...) where it fits; every marker carries
an SVG <title> tooltip with all fields. Thin coloured lines: each method's Pareto
frontier (points no other point of that method beats on both bits and increase);
thick grey line: the frontier over all methods. The output is deterministic and is
written atomically (temp file + rename) only when every input line is valid.
Errors (missing column, bad number, empty input) exit 2 naming the file and line.
"""
import argparse
import math
import os
import sys
import tempfile
from xml.sax.saxutils import escape

COLUMNS = ["model", "scheme", "method", "bits_per_weight", "ppl", "ppl_ratio", "mean_kl", "top1"]
METHOD_COLORS = {"rtn": "#1f77b4", "rtn-clip": "#17becf", "rtn-imp": "#9467bd", "gptq": "#d62728",
                 "gptq-act": "#ff7f0e", "awq": "#2ca02c", "alloc": "#8c564b"}
PALETTE = ["#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#7f7f7f"]
FAMILIES = [("int4", "int4 (asymmetric)", "circle"), ("int4s", "int4s (symmetric)", "square"),
            ("int3", "int3", "triangle"), ("int2", "int2", "diamond"),
            ("int8", "int8", "triangle-down"), ("other", "other", "cross")]
FLOOR = 0.01  # % - where increases <= 0 are drawn
Y_TICKS = [m * 10.0 ** e for e in range(-3, 5) for m in (1, 2, 5)]  # axis ends snap to these
Y_LABELS = [(1, 1.5, 2, 3, 4, 5, 7), (1, 2, 5), (1,)]  # label mantissas: densest set giving <= 8 ticks
WIDTH, CELL_H, FONT = 960, 420, "Helvetica, Arial, sans-serif"


class InputError(Exception):
    pass


def read_rows(paths):
    """Return {(model, scheme, method): row} in first-appearance order, or raise InputError."""
    rows = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read: {e}")
        if not lines or not lines[0].strip():
            raise InputError(f"{path}:1: empty file (expected a header line)")
        header = [h.strip() for h in lines[0].split("\t")]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}:1: missing column(s): {', '.join(missing)} (header: {' '.join(header)})")
        index = {c: header.index(c) for c in COLUMNS}
        count = 0
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise InputError(f"{path}:{n}: {len(fields)} fields, header has {len(header)}")
            row = {c: fields[index[c]].strip() for c in COLUMNS}
            for c in ("model", "scheme", "method"):
                if not row[c]:
                    raise InputError(f"{path}:{n}: empty {c}")
            for c in COLUMNS[3:]:
                try:
                    v = float(row[c])
                except ValueError:
                    raise InputError(f"{path}:{n}: {c} is not a number: {row[c]!r}")
                if not math.isfinite(v) and not (c == "ppl" and math.isnan(v)):
                    raise InputError(f"{path}:{n}: {c} must be finite: {row[c]!r}")
                row[c] = v
            if row["bits_per_weight"] <= 0 or row["ppl_ratio"] <= 0:
                raise InputError(f"{path}:{n}: bits_per_weight and ppl_ratio must be > 0")
            if not 0 <= row["top1"] <= 1:
                raise InputError(f"{path}:{n}: top1 must be a fraction in 0..1: {row['top1']!r}")
            row["inc"] = (row["ppl_ratio"] - 1) * 100
            key = (row["model"], row["scheme"], row["method"])
            rows[key] = row  # a replacement keeps the key's first position
            count += 1
        if count == 0:
            raise InputError(f"{path}:{len(lines) + 1}: no data rows after the header")
    return rows


def family(scheme):
    prefix = scheme.split("-", 1)[0]
    return prefix if prefix in {f[0] for f in FAMILIES} else "other"


def marker(shape, x, y, r, attrs):
    if shape == "circle":
        return f'<circle cx="{x:.2f}" cy="{y:.2f}" r="{r:.2f}" {attrs}/>'
    if shape == "square":
        s = r * 0.9
        return f'<rect x="{x - s:.2f}" y="{y - s:.2f}" width="{2 * s:.2f}" height="{2 * s:.2f}" {attrs}/>'
    pts = {"triangle": [(0, -1.2), (1.1, 0.8), (-1.1, 0.8)],
           "triangle-down": [(0, 1.2), (1.1, -0.8), (-1.1, -0.8)],
           "diamond": [(0, -1.25), (1.05, 0), (0, 1.25), (-1.05, 0)],
           "cross": [(-0.4, -1.1), (0.4, -1.1), (0.4, -0.4), (1.1, -0.4), (1.1, 0.4), (0.4, 0.4),
                     (0.4, 1.1), (-0.4, 1.1), (-0.4, 0.4), (-1.1, 0.4), (-1.1, -0.4), (-0.4, -0.4)]}[shape]
    return '<polygon points="{}" {}/>'.format(" ".join(f"{x + dx * r:.2f},{y + dy * r:.2f}" for dx, dy in pts), attrs)


def frontier(points):
    """Points not dominated (no other point with <= bits and <= increase), by increasing bits."""
    out = []
    for p in sorted(points, key=lambda p: (p["bits_per_weight"], p["inc"], p["scheme"], p["method"])):
        if not out or p["inc"] < out[-1]["inc"]:
            out.append(p)
    return out


def x_axis(points):
    lo, hi = min(p["bits_per_weight"] for p in points), max(p["bits_per_weight"] for p in points)
    if hi - lo < 1:
        lo, hi = (lo + hi) / 2 - 0.5, (lo + hi) / 2 + 0.5
    pad = max(0.2, 0.06 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    step = next(s for s in (0.25, 0.5, 1, 2, 4, 8, 16) if (hi - lo) / s <= 8)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return lo, hi, [lo + i * step for i in range(round((hi - lo) / step) + 1)]


def y_axis(points):
    vals = [max(p["inc"], FLOOR) for p in points]
    lo = max([t for t in Y_TICKS if t <= min(vals) / 1.25] or Y_TICKS[:1])
    hi = min([t for t in Y_TICKS if t >= max(vals) * 1.25] or Y_TICKS[-1:])
    for ms in Y_LABELS:
        ticks = [t for t in (m * 10.0 ** e for e in range(-3, 5) for m in ms) if lo * 0.999 <= t <= hi * 1.001]
        if len(ticks) <= 8:
            return lo, hi, ticks
    return lo, hi, ticks


def fmt_tick(t):
    return f"{t:.10g}"


def overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def panel(out, model, title, points, colors, left, top, w, h):
    px0, px1, py0, py1 = left + 64, left + w - 20, top + 34, top + h - 50  # plot area
    xlo, xhi, xticks = x_axis(points)
    ylo, yhi, yticks = y_axis(points)
    sx = lambda v: px0 + (v - xlo) / (xhi - xlo) * (px1 - px0)
    sy = lambda v: py1 - (math.log10(max(v, FLOOR)) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (py1 - py0)
    out.append(f'<g class="panel" data-model="{escape(model, {chr(34): "&quot;"})}">')
    out.append(f'<text x="{(px0 + px1) / 2:.2f}" y="{top + 20:.2f}" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>')
    for t in xticks:
        x = sx(t)
        out.append(f'<line x1="{x:.2f}" y1="{py0:.2f}" x2="{x:.2f}" y2="{py1:.2f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{x:.2f}" y="{py1 + 16:.2f}" text-anchor="middle" font-size="11">{fmt_tick(t)}</text>')
    for t in yticks:
        y = sy(t)
        out.append(f'<line x1="{px0:.2f}" y1="{y:.2f}" x2="{px1:.2f}" y2="{y:.2f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{px0 - 6:.2f}" y="{y + 4:.2f}" text-anchor="end" font-size="11">{fmt_tick(t)} %</text>')
    out.append(f'<rect x="{px0:.2f}" y="{py0:.2f}" width="{px1 - px0:.2f}" height="{py1 - py0:.2f}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{(px0 + px1) / 2:.2f}" y="{py1 + 36:.2f}" text-anchor="middle" font-size="12">bits per weight</text>')
    cy = (py0 + py1) / 2
    out.append(f'<text x="{left + 16:.2f}" y="{cy:.2f}" text-anchor="middle" font-size="12" transform="rotate(-90 {left + 16:.2f} {cy:.2f})">perplexity increase (log scale)</text>')

    def line(pts, attrs):
        if len(pts) > 1:
            xy = " ".join(f'{sx(p["bits_per_weight"]):.2f},{sy(p["inc"]):.2f}' for p in pts)
            out.append(f'<polyline points="{xy}" fill="none" stroke-linejoin="round" stroke-linecap="round" {attrs}/>')
    line(frontier(points), 'class="frontier-all" stroke="#c8c8c8" stroke-width="7"')
    for m in colors:
        line(frontier([p for p in points if p["method"] == m]), f'class="frontier" stroke="{colors[m]}" stroke-width="1.6" stroke-opacity="0.8"')
    order = list(colors)
    points = sorted(points, key=lambda p: (order.index(p["method"]), p["bits_per_weight"], p["scheme"]))
    boxes = [(sx(p["bits_per_weight"]) - 5, sy(p["inc"]) - 5, sx(p["bits_per_weight"]) + 5, sy(p["inc"]) + 5) for p in points]
    shapes = {f[0]: f[2] for f in FAMILIES}
    for p in points:
        x, y, c = sx(p["bits_per_weight"]), sy(p["inc"]), colors[p["method"]]
        hollow = p["inc"] <= 0
        attrs = f'fill="white" stroke="{c}" stroke-width="1.6"' if hollow else f'fill="{c}" stroke="white" stroke-width="0.8"'
        ppl = "n/a" if math.isnan(p["ppl"]) else f'{p["ppl"]:.4f}'
        tip = (f'{p["model"]} {p["scheme"]} {p["method"]}\nbits/weight {p["bits_per_weight"]:.3f}\nPPL {ppl}\n'
               f'PPL ratio {p["ppl_ratio"]:.4f} ({p["inc"]:+.2f} %)\nmean KL {p["mean_kl"]:.4f}\ntop-1 {p["top1"] * 100:.2f} %')
        out.append(f'<g class="point">{marker(shapes[family(p["scheme"])], x, y, 4.5, attrs)}<title>{escape(tip)}</title></g>')
        group = p["scheme"].split("-", 1)[1] if "-" in p["scheme"] else ""
        text = (group + " \u22640").strip() if hollow else group
        if not text:
            continue
        tw = 5.6 * len(text)
        for dx, dy, anchor in ((7, 3.5, "start"), (-7, 3.5, "end"), (0, -8, "middle"), (0, 15, "middle")):
            x0 = x + dx - {"start": 0, "end": tw, "middle": tw / 2}[anchor]
            box = (x0, y + dy - 8, x0 + tw, y + dy + 2)
            inside = px0 <= box[0] and box[2] <= px1 and py0 <= box[1] and box[3] <= py1
            if inside and not any(overlaps(box, b) for b in boxes):
                break
        else:
            if not hollow:
                continue  # no room: the tooltip still has it
            dx, dy, anchor, box = 7, 3.5, "start", None
        if box:
            boxes.append(box)
        out.append(f'<text class="label" x="{x + dx:.2f}" y="{y + dy:.2f}" text-anchor="{anchor}" font-size="10" fill="#444">{escape(text)}</text>')
    out.append("</g>")


def render(rows, titles):
    points = list(rows.values())
    models = list(dict.fromkeys(p["model"] for p in points))
    present = set(p["method"] for p in points)
    unknown = sorted(present - set(METHOD_COLORS))
    colors = {m: METHOD_COLORS[m] for m in METHOD_COLORS if m in present}
    colors.update({m: PALETTE[i % len(PALETTE)] for i, m in enumerate(unknown)})
    cols = min(len(models), 2)
    rows_n = (len(models) + cols - 1) // cols
    cell_w = WIDTH / cols
    body = []
    for i, model in enumerate(models):
        panel(body, model, titles.get(model, model), [p for p in points if p["model"] == model], colors,
              (i % cols) * cell_w, 36 + (i // cols) * CELL_H, cell_w, CELL_H)
    # Legend: methods (colour), then scheme families (shape), wrapping at the chart width.
    fams = [f for f in FAMILIES if any(family(p["scheme"]) == f[0] for p in points)]
    entries = [("method", m, colors[m]) for m in colors] + [("shape", f[1], f[2]) for f in fams]
    entries.append(("all", "frontier over all methods", None))
    if any(p["inc"] <= 0 for p in points):
        entries.append(("hollow", "hollow: increase \u2264 0, drawn at 0.01 %", None))
    x, y = 20.0, 36 + rows_n * CELL_H + 10
    legend = []
    for kind, text, style in entries:
        w = 34 + 6.5 * len(text) + 18
        if x + w > WIDTH - 10:
            x, y = 20.0, y + 24
        if kind == "method":
            legend.append(f'<line x1="{x:.2f}" y1="{y:.2f}" x2="{x + 24:.2f}" y2="{y:.2f}" stroke="{style}" stroke-width="1.6"/>')
            legend.append(marker("circle", x + 12, y, 4.5, f'fill="{style}" stroke="white" stroke-width="0.8"'))
        elif kind == "shape":
            legend.append(marker(style, x + 12, y, 4.5, 'fill="#666" stroke="white" stroke-width="0.8"'))
        elif kind == "all":
            legend.append(f'<line x1="{x:.2f}" y1="{y:.2f}" x2="{x + 24:.2f}" y2="{y:.2f}" stroke="#c8c8c8" stroke-width="7" stroke-linecap="round"/>')
        else:
            legend.append(marker("circle", x + 12, y, 4.5, 'fill="white" stroke="#666" stroke-width="1.6"'))
        legend.append(f'<text x="{x + 32:.2f}" y="{y + 4:.2f}" font-size="12">{escape(text)}</text>')
        x += w
    height = y + 22
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" font-family="{FONT}" font-size="12">',
            f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
            f'<text x="{WIDTH / 2:.2f}" y="24" text-anchor="middle" font-size="14" font-weight="bold">'
            'Perplexity increase vs bits per weight (lower left is better)</text>']
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>'] + head + body + legend + ["</svg>", ""])


def write_output(path, text):
    """Replace path atomically (temp file in the same directory + rename). `-`, devices and
    FIFOs (e.g. /dev/stdout) are written in place; a symlink's target is replaced, not the link."""
    if path == "-":
        sys.stdout.write(text)
        return
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        return
    real = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(prefix=".frontier-", suffix=".svg.tmp", dir=os.path.dirname(real))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, real)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description="Render perplexity increase vs bits per weight as SVG.")
    ap.add_argument("-o", "--output", default="docs/frontier.svg", help="output SVG, - for stdout (default docs/frontier.svg)")
    ap.add_argument("--title", action="append", default=[], metavar="MODEL=TEXT", help="panel title for MODEL (repeatable)")
    ap.add_argument("files", nargs="+", metavar="FILE.tsv")
    args = ap.parse_args()
    titles = {}
    for t in args.title:
        if "=" not in t:
            ap.error(f"--title expects MODEL=TEXT, got {t!r}")
        k, v = t.split("=", 1)
        titles[k] = v
    try:
        svg = render(read_rows(args.files), titles)
    except InputError as e:
        print(f"frontier-chart: {e}", file=sys.stderr)
        return 2
    try:
        write_output(args.output, svg)
    except OSError as e:
        print(f"frontier-chart: {args.output}: cannot write: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
