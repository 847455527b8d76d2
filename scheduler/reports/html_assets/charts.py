"""Inline SVG charts for the HTML reports, drawn in Python (no chart library, no JS).

Every chart is an `<svg class="chart KIND">` with a viewBox, so it scales down with the
page; text in it is escaped here. Scores are taken to live in [0, 1]: intervals that
reach past either end are clipped at the plot edge (the tooltip keeps the real bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

ACCENT, ACCENT_DARK, INK, MUTED = "#3b6fd8", "#1e3a8a", "#1e293b", "#64748b"
GOOD, BAD, NEUTRAL, DRIFT = "#15803d", "#c2410c", "#94a3b8", "#dc2626"


def _c(x: float) -> str:
    """A coordinate, short."""
    return f"{x:.1f}".removesuffix(".0")


def _clip(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, v))


def _fmt(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _svg(kind: str, width: int, height: float, body: list[str], label: str,
         **data: str) -> str:
    attrs = "".join(f' data-{k}="{escape(v)}"' for k, v in data.items())
    return (f'<svg class="chart {kind}"{attrs} viewBox="0 0 {width} {_c(height)}" '
            f'style="max-width:{width}px" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{_c(x)}" y="{_c(y)}" text-anchor="{anchor}"{extra}>'
            f"{escape(s)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, style: str) -> str:
    return f'<line x1="{_c(x1)}" y1="{_c(y1)}" x2="{_c(x2)}" y2="{_c(y2)}" {style}/>'


def _whisker(x1: float, x2: float, y: float, color: str, caps: tuple[bool, bool]) -> str:
    out = [_line(x1, y, x2, y, f'stroke="{color}" stroke-width="1.5"')]
    for x, cap in ((x1, caps[0]), (x2, caps[1])):
        if cap:
            out.append(_line(x, y - 5, x, y + 5, f'stroke="{color}" stroke-width="1.5"'))
    return "".join(out)


def _short(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def histogram(label: str, values: Sequence[float], mean: float | None) -> str:
    """Counts of the scores in 10 bins over [0, 1], with the mean marked."""
    width, height, left, right, top, bottom = 540, 200, 42, 14, 24, 40
    counts = [0] * 10
    for v in values:
        if math.isfinite(v):
            counts[min(9, max(0, math.floor(v * 10 + 1e-9)))] += 1
    step = max(1, math.ceil(max(counts) / 4))
    ymax = step * max(1, math.ceil(max(counts) / step))
    pw, ph = width - left - right, height - top - bottom
    bin_w = pw / 10

    def y(count: float) -> float:
        return top + ph * (1 - count / ymax)

    body = []
    for tick in range(0, ymax + 1, step):
        body.append(_line(left, y(tick), width - right, y(tick), 'class="grid"'))
        body.append(_text(left - 6, y(tick) + 4, str(tick), "end"))
    for i, count in enumerate(counts):
        x = left + i * bin_w
        if count:
            tip = f"[{i / 10:.1f}, {(i + 1) / 10:.1f}{']' if i == 9 else ')'}: {count}"
            body.append(f'<rect class="bar" x="{_c(x + 2)}" y="{_c(y(count))}" '
                        f'width="{_c(bin_w - 4)}" height="{_c(y(0) - y(count))}" rx="2" '
                        f'fill="{ACCENT}"><title>{escape(tip)}</title></rect>')
            body.append(_text(x + bin_w / 2, y(count) - 4, str(count),
                              extra=f' style="fill:{INK}"'))
    body.append(_line(left, y(0), width - right, y(0), 'class="axis"'))
    for i in range(0, 11, 2):
        x = left + i * bin_w
        body.append(_line(x, y(0), x, y(0) + 4, 'class="axis"'))
        body.append(_text(x, y(0) + 16, f"{i / 10:g}"))
    body.append(_text(left + pw / 2, height - 4, "score"))
    body.append(_text(12, top + ph / 2, "items",
                      extra=f' transform="rotate(-90 12 {_c(top + ph / 2)})"'))
    if mean is not None:
        x = left + pw * _clip(mean)
        body.append(_line(x, top - 6, x, y(0), f'stroke="{INK}" stroke-dasharray="4 3"'))
        anchor, dx = ("end", -5) if mean > 0.75 else ("start", 5)
        body.append(_text(x + dx, top - 8, f"mean {mean:.3f}", anchor,
                          f' style="fill:{INK};font-weight:600"'))
    return _svg("histogram", width, height, body, f"distribution of {label} scores",
                scorer=label)


def categories(label: str, field: str, groups: dict[str, Any]) -> str:
    """One bar per metadata value: the scorer's mean with its 95% interval as error bar."""
    width, left, right, top, row, bottom = 540, 150, 74, 8, 28, 30
    height = top + row * max(1, len(groups)) + bottom
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * _clip(v)

    base = top + row * len(groups)
    body = []
    for tick in (0, 0.25, 0.5, 0.75, 1):
        body.append(_line(x(tick), top, x(tick), base, 'class="grid"'))
        body.append(_text(x(tick), base + 16, f"{tick:g}"))
    body.append(_line(left, base, width - right, base, 'class="axis"'))
    for i, (name, group) in enumerate(groups.items()):
        s = ((group or {}).get("scorers") or {}).get(label) or {}
        cy = top + row * i + row / 2
        n = (group or {}).get("n_items", s.get("n_scored"))
        body.append(f'<text x="{left - 10}" y="{_c(cy + 4)}" text-anchor="end">'
                    f"<title>{escape(str(name))}</title>{escape(_short(str(name), 22))}</text>")
        mean, lo, hi = s.get("mean"), s.get("ci_low"), s.get("ci_high")
        tip = (f"{name}: mean {_fmt(mean)}, 95% CI [{_fmt(lo)}, {_fmt(hi)}], "
               f"n={s.get('n_scored', '?')}")
        if mean is not None:
            body.append(f'<rect class="bar" x="{left}" y="{_c(cy - 7)}" '
                        f'width="{_c(x(mean) - left)}" height="14" rx="2" fill="{ACCENT}" '
                        f'fill-opacity="0.7"><title>{escape(tip)}</title></rect>')
        if lo is not None and hi is not None:
            body.append(f'<g class="errorbar"><title>{escape(tip)}</title>'
                        + _whisker(x(lo), x(hi), cy, ACCENT_DARK, (True, True)) + "</g>")
        body.append(f'<text x="{width - right + 10}" y="{_c(cy + 4)}" '
                    f'style="fill:{INK};font-weight:600">{escape(_fmt(mean, 2))}'
                    f'<tspan style="fill:{MUTED};font-weight:400"> n={escape(str(n))}</tspan>'
                    "</text>")
    return _svg("categories", width, height, body,
                f"{label} by {field}: mean and 95% interval", scorer=label, field=field)


def verdict_color(verdict: Any, diff: float | None, lo: float | None,
                  hi: float | None) -> str:
    """Green when the candidate is better, orange when worse, grey otherwise."""
    word = str(verdict or "").lower()
    if any(w in word for w in ("worse", "regress", "degrad", "drop")):
        return BAD
    if any(w in word for w in ("better", "improv", "gain")):
        return GOOD
    if verdict is None and diff is not None and lo is not None and hi is not None:
        return GOOD if lo > 0 else BAD if hi < 0 else NEUTRAL
    return NEUTRAL


def diff_chart(scorers: dict[str, Any]) -> str:
    """Per scorer, candidate − baseline as a dot with its 95% interval around zero."""
    width, left, right, top, row, bottom = 1100, 160, 380, 26, 34, 30
    height = top + row * max(1, len(scorers)) + bottom
    bounds = [abs(v) for s in scorers.values() for k in ("diff", "ci_low", "ci_high")
              if isinstance(v := (s or {}).get(k), int | float)]
    span = max(bounds, default=0.0) * 1.05
    m = next((n for n in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0) if n >= span), 1.0)
    pw = width - left - right

    def x(v: float) -> float:
        return left + pw * (_clip(v, -m, m) + m) / (2 * m)

    base = top + row * len(scorers)
    body = [_text(left, 14, "← baseline better", "start", f' style="fill:{MUTED}"'),
            _text(width - right, 14, "candidate better →", "end", f' style="fill:{MUTED}"')]
    for tick in (-m, -m / 2, 0.0, m / 2, m):
        body.append(_line(x(tick), top, x(tick), base, 'class="grid"'))
        body.append(_text(x(tick), base + 16, "0" if tick == 0 else f"{tick:+g}"))
    body.append(_line(x(0), top - 4, x(0), base, f'stroke="{MUTED}" stroke-width="1.2"'))
    body.append(_line(left, base, width - right, base, 'class="axis"'))
    for i, (name, s) in enumerate(scorers.items()):
        s = s or {}
        cy = top + row * i + row / 2
        diff, lo, hi = s.get("diff"), s.get("ci_low"), s.get("ci_high")
        color = verdict_color(s.get("verdict"), diff, lo, hi)
        tip = f"{name}: diff {_fmt(diff, sign=True)}, 95% CI [{_fmt(lo)}, {_fmt(hi)}]"
        body.append(f'<text x="{left - 10}" y="{_c(cy + 4)}" text-anchor="end" '
                    f'style="fill:{INK};font-weight:600"><title>{escape(str(name))}</title>'
                    f"{escape(_short(str(name), 22))}</text>")
        parts = [f"<title>{escape(tip)}</title>"]
        if lo is not None and hi is not None:
            parts.append(_whisker(x(lo), x(hi), cy, color, (abs(lo) <= m, abs(hi) <= m)))
        if diff is not None:
            parts.append(f'<circle cx="{_c(x(diff))}" cy="{_c(cy)}" r="5.5" fill="{color}" '
                         'stroke="#fff" stroke-width="1.5"/>')
        body.append(f'<g class="diff" data-scorer="{escape(str(name))}">{"".join(parts)}</g>')
        ci = f"[{_fmt(lo, sign=True)}, {_fmt(hi, sign=True)}]" if lo is not None else ""
        body.append(f'<text x="{width - right + 14}" y="{_c(cy + 4)}" '
                    f'style="fill:{INK};font-weight:600">{escape(_fmt(diff, sign=True))}'
                    f'<tspan style="fill:{MUTED};font-weight:400"> {escape(ci)}</tspan>'
                    f'<tspan style="fill:{color};font-weight:600"> '
                    f"{escape(str(s.get('verdict') or ''))}</tspan></text>")
    return _svg("diffs", width, height, body, "score differences, candidate minus baseline")


@dataclass(frozen=True)
class Point:
    """One window of one scorer on the timeline (t: window middle, epoch seconds)."""

    t: float
    mean: float | None
    low: float | None
    high: float | None
    drift: bool
    tip: str


_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
          7 * 86400, 30 * 86400)


def _time_ticks(t0: float, t1: float) -> tuple[list[float], str]:
    span = max(t1 - t0, 1.0)
    step = next((s for s in _STEPS if span / s <= 7), _STEPS[-1])
    first = math.ceil(t0 / step) * step
    ticks = [float(t) for t in range(int(first), int(t1) + 1, step)]
    if step >= 86400:
        return ticks, "%b %d"
    return ticks, "%b %d %H:%M" if span > 86400 else "%H:%M"


def timeline(label: str, points: list[Point], t0: float, t1: float, gap: float,
             baseline: dict[str, Any] | None) -> str:
    """Windowed mean over time: a band from low to high, the mean as a line, drifted
    windows marked red, and the baseline (when given) as a dashed line with its band."""
    width, height, left, right, top, bottom = 1100, 250, 44, 16, 26, 34
    pw, ph = width - left - right, height - top - bottom
    t1 = max(t1, t0 + 1)

    def x(t: float) -> float:
        return left + pw * _clip((t - t0) / (t1 - t0))

    def y(v: float) -> float:
        return top + ph * (1 - _clip(v))

    body = []
    for tick in (0, 0.25, 0.5, 0.75, 1):
        body.append(_line(left, y(tick), width - right, y(tick), 'class="grid"'))
        body.append(_text(left - 6, y(tick) + 4, f"{tick:g}", "end"))
    ticks, fmt = _time_ticks(t0, t1)
    for tick in ticks:
        body.append(_line(x(tick), y(0), x(tick), y(0) + 4, 'class="axis"'))
        body.append(_text(x(tick), y(0) + 17,
                          datetime.fromtimestamp(tick, UTC).strftime(fmt)))
    body.append(_line(left, y(0), width - right, y(0), 'class="axis"'))
    if baseline and baseline.get("mean") is not None:
        bm, blo, bhi = baseline["mean"], baseline.get("low"), baseline.get("high")
        if blo is not None and bhi is not None:
            body.append(f'<rect class="baseline-band" x="{left}" y="{_c(y(bhi))}" '
                        f'width="{pw}" height="{_c(y(blo) - y(bhi))}" fill="{NEUTRAL}" '
                        'fill-opacity="0.18"/>')
        body.append(_line(left, y(bm), width - right, y(bm),
                          f'class="baseline" stroke="{MUTED}" stroke-dasharray="5 4"'))
        body.append(_text(width - right - 4, y(bm) - 5, f"baseline {bm:.3f}", "end"))
    segments: list[list[Point]] = []
    for p in points:
        if p.mean is None:
            continue
        if segments and p.t - segments[-1][-1].t <= gap:
            segments[-1].append(p)
        else:
            segments.append([p])
    for seg in segments:
        banded = [p for p in seg if p.low is not None and p.high is not None]
        if banded:
            pad = 4 if len(banded) == 1 else 0
            upper = [(x(p.t), y(p.high or 0)) for p in banded]
            lower = [(x(p.t), y(p.low or 0)) for p in reversed(banded)]
            if pad:
                upper = [(upper[0][0] - pad, upper[0][1]), (upper[0][0] + pad, upper[0][1])]
                lower = [(lower[0][0] + pad, lower[0][1]), (lower[0][0] - pad, lower[0][1])]
            pts = " ".join(f"{_c(a)},{_c(b)}" for a, b in upper + lower)
            body.append(f'<polygon class="band" points="{pts}" fill="{ACCENT}" '
                        'fill-opacity="0.16"/>')
        if len(seg) > 1:
            pts = " ".join(f"{_c(x(p.t))},{_c(y(p.mean or 0))}" for p in seg)
            body.append(f'<polyline class="mean" points="{pts}" fill="none" '
                        f'stroke="{ACCENT}" stroke-width="2" stroke-linejoin="round"/>')
    for p in points:
        if p.mean is None:
            continue
        cls, r, fill = ("point drift", 5, DRIFT) if p.drift else ("point", 3.5, ACCENT)
        body.append(f'<circle class="{cls}" cx="{_c(x(p.t))}" cy="{_c(y(p.mean))}" r="{r}" '
                    f'fill="{fill}" stroke="#fff" stroke-width="1.5">'
                    f"<title>{escape(p.tip)}</title></circle>")
    legend = [(ACCENT, "line", "mean"), (ACCENT, "band", "95% CI"), (DRIFT, "dot", "drift")]
    lx = width - right - 230
    for color, kind, name in legend:
        if kind == "line":
            body.append(_line(lx, 11, lx + 18, 11, f'stroke="{color}" stroke-width="2"'))
        elif kind == "band":
            body.append(f'<rect x="{lx}" y="5" width="18" height="12" fill="{color}" '
                        'fill-opacity="0.16"/>')
        else:
            body.append(f'<circle cx="{lx + 9}" cy="11" r="5" fill="{color}"/>')
        body.append(_text(lx + 24, 15, name, "start"))
        lx += 80
    return _svg("timeline", width, height, body, f"{label} per window over time",
                scorer=label)
