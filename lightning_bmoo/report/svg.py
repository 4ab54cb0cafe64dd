"""Inline SVG charts for the report: line charts, heatmaps, colour bars, and their numbers.

Pure string building (no plotting package), so the page needs nothing at view time.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

# Enough points for a smooth curve on a 500 px chart; a long run has 1e5 steps.
MAX_POINTS = 1500
# Longer series are drawn faint, under their moving average.
SMOOTH_ABOVE = 60
# A range narrower than this, relative to its values, is float noise: drawn as a flat line.
FLAT = 1e-6

LANG_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
# Runs get their own palette so a run is never mistaken for a language.
RUN_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
# ColorBrewer RdBu, red for negative (conflict), blue for positive (agreement).
DIVERGING = ((-1.0, (178, 24, 43)), (-0.5, (239, 138, 98)), (0.0, (247, 247, 247)),
             (0.5, (103, 169, 207)), (1.0, (33, 102, 172)))  # fmt: skip
# Approximate glyph widths (px) of the page's sans-serif at the sizes used, to size boxes.
_CHAR_W = {10: 6.0, 11: 6.6, 13: 7.8}

esc = html.escape
# Ids inside inline SVGs share the page's namespace: number them.
_ids = itertools.count()


# -- numbers ---------------------------------------------------------------------------------


def fmt(v: float) -> str:
    """Short number: ``0.123``, ``12.3``, ``1.5M``, ``2e-05``."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1e4:
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{v / div:.3g}{suffix}"
    if a >= 1e3:  # 1250, not 1.25e+03
        return f"{v:.4g}"
    return f"{v:.3g}".replace("e-0", "e-")


def labelled_ticks(ticks: Sequence[float]) -> list[tuple[float, str]]:
    """``(tick, label)`` pairs with distinct labels: :func:`fmt`, more digits where that
    would print two ticks alike, and a tick dropped where even 15 digits cannot tell it from
    the one before (a range as narrow as float noise)."""
    labels = [fmt(t) for t in ticks]
    digits = 4
    while len(set(labels)) < len(labels) and digits <= 15:
        labels = [f"{t:.{digits}g}" for t in ticks]
        digits += 1
    seen: set[str] = set()
    return [(t, s) for t, s in zip(ticks, labels) if not (s in seen or seen.add(s))]


def cell_text(x: float) -> str:
    """A heatmap cell's value, with as many digits as its magnitude needs to be read.

    ``0.42``, ``-1.25``, ``37``, ``-2.8e-5``: never a ``0.00`` hiding a small value or its sign.
    """
    a = abs(x)
    if a == 0 or not math.isfinite(x):
        return "0" if a == 0 else str(x)
    if 0.01 <= a < 10:
        return f"{x:.2f}"
    if 10 <= a < 1000:
        return f"{x:.0f}"
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) covering ``[lo, hi]``, about ``n`` of them."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    # Counted, not accumulated: on a range as narrow as float noise, t += step stands still.
    count = math.floor((hi - first) / step + 1e-9) + 1
    ticks = (first + k * step for k in range(max(count, 0)))
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def pad_range(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` widened by 5 %; a flat (or float-noise flat) range around its value."""
    if hi - lo <= FLAT * max(abs(lo), abs(hi)):
        mid = (lo + hi) / 2
        d = abs(mid) * 0.05 or 1.0
        return mid - d, mid + d
    d = (hi - lo) * 0.05
    return lo - d, hi + d


def diverging(v: float, vmax: float) -> str:
    """RdBu colour of ``v`` on ``[-vmax, vmax]``."""
    t = max(-1.0, min(1.0, v / vmax)) if vmax > 0 else 0.0
    for (x0, c0), (x1, c1) in itertools.pairwise(DIVERGING):
        if t <= x1:
            f = (t - x0) / (x1 - x0)
            r, g, b = (round(a + (b - a) * f) for a, b in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#2166ac"


def downsample(xs: Sequence[int], ys: Sequence[float]) -> tuple[list[int], list[float]]:
    """At most :data:`MAX_POINTS` evenly strided points, the last one always kept."""
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    stride = math.ceil(len(xs) / MAX_POINTS)
    idx = [*range(0, len(xs), stride)]
    if idx[-1] != len(xs) - 1:  # always keep the last value: it is the one people quote
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def ema(ys: Sequence[float]) -> list[float]:
    """Debiased exponential moving average spanning about 1/30 of the series."""
    alpha = 2 / (max(2, len(ys) // 30) + 1)
    out, acc, norm = [], 0.0, 0.0
    for y in ys:
        acc = (1 - alpha) * acc + alpha * y
        norm = (1 - alpha) * norm + alpha
        out.append(acc / norm)
    return out


def text_width(s: str, size: int = 11) -> float:
    """About how many pixels ``s`` takes at font size ``size``."""
    return len(s) * _CHAR_W.get(size, size * 0.6)


# -- elements --------------------------------------------------------------------------------


def el(tag: str, body: str = "", /, **attrs: object) -> str:
    """An SVG element; ``class_`` -> ``class``, ``text_anchor`` -> ``text-anchor``."""
    parts = []
    for k, v in attrs.items():
        if v is not None:
            v = f"{v:.1f}".removesuffix(".0") if isinstance(v, float) else v
            parts.append(f' {k.rstrip("_").replace("_", "-")}="{v}"')
    a = "".join(parts)
    return f"<{tag}{a}>{body}</{tag}>" if body else f"<{tag}{a}/>"


def text(x: float, y: float, s: str, cls: str = "tick", **attrs: object) -> str:
    """A ``<text>`` element (CSS class ``cls``)."""
    return el("text", esc(s), x=x, y=y, class_=cls, **attrs)


def svg_open(width: float, height: float, title: str, cls: str) -> str:
    """The opening ``<svg>`` tag with a title for screen readers and tooltips."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
    )


# -- charts ----------------------------------------------------------------------------------


@dataclass
class Line:
    """One curve of a line chart."""

    label: str
    xs: list[int]
    ys: list[float]
    colour: str


def line_chart(
    title: str,
    lines: Sequence[Line],
    *,
    ylabel: str,
    xlabel: str = "step",
    yrange: tuple[float, float] | None = None,
    width: int = 560,
    height: int = 300,
) -> str:
    """An SVG line chart with axes, ticks, a legend on the right and hover tooltips."""
    lines = [ln for ln in lines if ln.xs]
    legend = len(lines) > 1
    legend_w = min(150, 16 + 7 * max(len(ln.label) for ln in lines)) if legend else 0
    if yrange is None:
        yrange = pad_range(min(min(ln.ys) for ln in lines), max(max(ln.ys) for ln in lines))
    y_lo, y_hi = yrange
    y_ticks = labelled_ticks(nice_ticks(y_lo, y_hi))
    # Room for the longest y tick label left of the axis.
    ml = max(62, 28 + text_width(max((s for _, s in y_ticks), key=len)))
    mr, mt, mb = 12 + legend_w, 30, 42
    if legend:  # legend entries are 15 px apart: make room for all of them
        height = max(height, mt + 15 * len(lines) + 10)
    pw, ph = width - ml - mr, height - mt - mb
    x_lo = min(ln.xs[0] for ln in lines)
    x_hi = max(ln.xs[-1] for ln in lines)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def sx(x: float) -> float:
        return ml + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    out = [svg_open(width, height, title, "line-chart")]
    out.append(text(ml + pw / 2, 18, title, "title"))
    out.append(el("rect", class_="plot", x=ml, y=mt, width=pw, height=ph))
    for t, label in y_ticks:
        y = sy(t)
        out.append(el("line", class_="grid", x1=ml, x2=ml + pw, y1=y, y2=y))
        out.append(text(ml - 5, y + 4, label, "tick ytick", text_anchor="end"))
    for t in nice_ticks(x_lo, x_hi, 6):
        if t == int(t):  # steps are integers
            x = sx(t)
            out.append(el("line", class_="grid", x1=x, x2=x, y1=mt, y2=mt + ph))
            out.append(text(x, mt + ph + 15, fmt(t), "tick xtick", text_anchor="middle"))
    out.append(text(ml + pw / 2, height - 6, xlabel, "axis", text_anchor="middle"))
    out.append(
        text(0, 0, ylabel, "axis", text_anchor="middle",
             transform=f"translate(14 {mt + ph / 2:.1f}) rotate(-90)")
    )  # fmt: skip
    clip = f"clip{next(_ids)}"
    out.append(el("clipPath", el("rect", x=ml, y=mt, width=pw, height=ph), id=clip))
    out.append(f'<g clip-path="url(#{clip})">')
    for ln in lines:
        xs, ys = downsample(ln.xs, ln.ys)
        tip = el("title", esc(f"{ln.label}: last {fmt(ys[-1])} at step {xs[-1]}"))
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        if len(xs) > SMOOTH_ABOVE:
            # Per-step curves are noisy: keep the raw curve faint under a moving average.
            out.append(el("polyline", class_="series raw", stroke=ln.colour, points=pts))
            pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ema(ys)))
        if len(xs) > 1:
            out.append(el("polyline", tip, class_="series", stroke=ln.colour, points=pts))
        if len(xs) <= 40:  # sparse series (validation) read better with markers
            out.extend(
                el("circle", el("title", esc(f"{ln.label}: {fmt(y)} at step {x}")),
                   cx=sx(x), cy=sy(y), r=2.5, fill=ln.colour)
                for x, y in zip(xs, ys)
            )  # fmt: skip
    out.append("</g>")
    if legend:
        lx = ml + pw + 10
        for i, ln in enumerate(lines):
            y = mt + 8 + 15 * i
            out.append(el("line", x1=lx, x2=lx + 12, y1=y, y2=y, stroke=ln.colour, stroke_width=3))
            out.append(text(lx + 16, y + 4, ln.label[:18], "legend"))
    out.append("</svg>")
    return "".join(out)


def heatmap(
    title: str,
    labels: Sequence[str],
    cells: dict[tuple[str, str], float],
    *,
    vmax: float,
) -> str:
    """An SVG heatmap of ``cells[(row, col)]`` on a diverging scale ``[-vmax, vmax]``.

    Cells print their value (:func:`cell_text`) when there is room; tooltips always do.
    """
    n = len(labels)
    cell = max(14, min(40, 280 // max(n, 1)))
    show_values = cell >= 30
    if show_values:  # widen the cells to the longest number rather than clip it
        longest = max((cell_text(v) for v in cells.values()), key=len, default="")
        cell = max(cell, math.ceil(text_width(longest, 10)) + 6)
    lab_w = 8 + 7 * max((len(s) for s in labels), default=1)
    ml, mt = lab_w, 28 + lab_w
    width = max(ml + n * cell + 10, text_width(title, 13) + 10)
    height = mt + n * cell + 8
    out = [svg_open(width, height, title, "heatmap")]
    out.append(text(width / 2, 16, title, "title"))
    for i, r in enumerate(labels):
        out.append(text(ml - 4, mt + i * cell + cell / 2 + 4, r, text_anchor="end"))
        cx = ml + i * cell + cell / 2
        out.append(text(0, 0, r, transform=f"translate({cx + 4:.1f} {mt - 4}) rotate(-90)"))
        for j, c in enumerate(labels):
            v = cells.get((r, c))
            x, y = ml + j * cell, mt + i * cell
            fill = "#d0d0d0" if v is None else diverging(v, vmax)
            tip = el("title", esc(f"{r} · {c}: " + ("not logged" if v is None else fmt(v))))
            out.append(el("rect", tip, x=x, y=y, width=cell, height=cell, fill=fill, class_="cell"))
            if show_values and v is not None:
                ink = "#fff" if abs(v) > 0.6 * vmax else "#222"
                out.append(text(x + cell / 2, y + cell / 2 + 4, cell_text(v), "val", fill=ink))
    out.append("</svg>")
    return "".join(out)


def colour_bar(vmax: float, label: str) -> str:
    """A vertical colour scale from ``-vmax`` (bottom) to ``vmax`` (top)."""
    h, top = 250, 24
    ticks = [fmt((2 * frac - 1) * vmax) for frac in (0, 0.25, 0.5, 0.75, 1)]
    # Wide enough for the longest tick label and the label itself: nothing clipped.
    w = max(70, 32 + text_width(max(ticks, key=len)), 8 + text_width(label))
    grad = f"rdbu{next(_ids)}"
    stops = "".join(
        el("stop", offset=f"{(x + 1) / 2:.2f}", stop_color=f"rgb({r},{g},{b})")
        for x, (r, g, b) in DIVERGING
    )
    out = [svg_open(w, h + top + 20, f"colour scale {label}", "colour-bar")]
    out.append(text(4, 14, label))
    out.append(el("defs", el("linearGradient", stops, id=grad, x1=0, y1=1, x2=0, y2=0)))
    out.append(el("rect", x=6, y=top, width=16, height=h, fill=f"url(#{grad})", stroke="#888"))
    for frac, label_text in zip((0, 0.25, 0.5, 0.75, 1), ticks):
        y = top + (1 - frac) * h
        out.append(el("line", x1=22, x2=26, y1=y, y2=y, stroke="#555"))
        out.append(text(28, y + 4, label_text))
    out.append("</svg>")
    return "".join(out)
