"""A self-contained HTML report of one or more runs' interference metrics.

Figures are inline SVG written here, so the page needs no network, no JS library and no
plotting package; a few lines of inline JS drive the heatmap sliders, and the page reads
fine without them (the last step is shown).
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from .sources import Run

PREFIX = "interference/"
# Enough points for a smooth curve on a 500 px chart; a long run has 1e5 steps.
MAX_POINTS = 1500
MAX_SLIDER_FRAMES = 60
# Longer series are drawn faint, under their moving average.
SMOOTH_ABOVE = 60

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

esc = html.escape
# Ids inside inline SVGs share the page's namespace: number them.
_ids = itertools.count()


# ----------------------------------------------------------------------------------------
# Formatting and scales


def fmt(v: float) -> str:
    """Short number: ``0.123``, ``12.3``, ``1.5M``, ``2e-05``."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1e4:
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}".replace("e-0", "e-")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def pad_range(lo: float, hi: float) -> tuple[float, float]:
    if hi == lo:  # a flat line still needs a visible range
        d = abs(lo) * 0.05 or 1.0
        return lo - d, hi + d
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


def natural_key(s: str) -> tuple:
    """Sort "2" before "10" (affinity indices), names alphabetically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s) if p)


def downsample(xs: Sequence[int], ys: Sequence[float]) -> tuple[list[int], list[float]]:
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


# ----------------------------------------------------------------------------------------
# SVG figures


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
    return el("text", esc(s), x=x, y=y, class_=cls, **attrs)


@dataclass
class Line:
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
    ml, mr, mt, mb = 62, 12 + legend_w, 30, 42
    if legend:  # legend entries are 15 px apart: make room for all of them
        height = max(height, mt + 15 * len(lines) + 10)
    pw, ph = width - ml - mr, height - mt - mb
    x_lo = min(ln.xs[0] for ln in lines)
    x_hi = max(ln.xs[-1] for ln in lines)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if yrange is None:
        yrange = pad_range(min(min(ln.ys) for ln in lines), max(max(ln.ys) for ln in lines))
    y_lo, y_hi = yrange

    def sx(x: float) -> float:
        return ml + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    out = [_svg_open(width, height, title, "line-chart")]
    out.append(text(ml + pw / 2, 18, title, "title"))
    out.append(el("rect", class_="plot", x=ml, y=mt, width=pw, height=ph))
    for t in nice_ticks(y_lo, y_hi):
        y = sy(t)
        out.append(el("line", class_="grid", x1=ml, x2=ml + pw, y1=y, y2=y))
        out.append(text(ml - 5, y + 4, fmt(t), text_anchor="end"))
    for t in nice_ticks(x_lo, x_hi, 6):
        if t == int(t):  # steps are integers
            x = sx(t)
            out.append(el("line", class_="grid", x1=x, x2=x, y1=mt, y2=mt + ph))
            out.append(text(x, mt + ph + 15, fmt(t), text_anchor="middle"))
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
    title: str, labels: Sequence[str], cells: dict[tuple[str, str], float], *, vmax: float
) -> str:
    """An SVG heatmap of ``cells[(row, col)]`` on a diverging scale ``[-vmax, vmax]``."""
    n = len(labels)
    cell = max(14, min(40, 280 // max(n, 1)))
    lab_w = 8 + 7 * max((len(s) for s in labels), default=1)
    ml, mt = lab_w, 28 + lab_w
    width = max(ml + n * cell + 10, 7 * len(title) + 10)
    height = mt + n * cell + 8
    out = [_svg_open(width, height, title, "heatmap")]
    out.append(text(width / 2, 16, title, "title"))
    show_values = cell >= 30
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
                out.append(text(x + cell / 2, y + cell / 2 + 4, f"{v:.2f}", "val", fill=ink))
    out.append("</svg>")
    return "".join(out)


def colour_bar(vmax: float, label: str) -> str:
    """A vertical colour scale from ``-vmax`` (bottom) to ``vmax`` (top)."""
    w, h, top = 70, 250, 24
    grad = f"rdbu{next(_ids)}"
    stops = "".join(
        el("stop", offset=f"{(x + 1) / 2:.2f}", stop_color=f"rgb({r},{g},{b})")
        for x, (r, g, b) in DIVERGING
    )
    out = [_svg_open(w, h + top + 20, f"colour scale {label}", "colour-bar")]
    out.append(text(4, 14, label))
    out.append(el("defs", el("linearGradient", stops, id=grad, x1=0, y1=1, x2=0, y2=0)))
    out.append(el("rect", x=6, y=top, width=16, height=h, fill=f"url(#{grad})", stroke="#888"))
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + (1 - frac) * h
        out.append(el("line", x1=22, x2=26, y1=y, y2=y, stroke="#555"))
        out.append(text(28, y + 4, fmt((2 * frac - 1) * vmax)))
    out.append("</svg>")
    return "".join(out)


def _svg_open(width: float, height: float, title: str, cls: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
    )


# ----------------------------------------------------------------------------------------
# Metric families


@dataclass(frozen=True)
class Scalar:
    """One value per step; runs are overlaid on one chart."""

    key: str
    title: str
    ylabel: str


@dataclass(frozen=True)
class PerLanguage:
    """One value per language per step; one chart per run, side by side on one y scale.

    The first prefix with any logged key wins (the module's ``val/loss/<lang>`` and the
    callback's ``interference/val_loss/<lang>`` are the same quantity).
    """

    prefixes: tuple[str, ...]
    title: str
    ylabel: str


@dataclass(frozen=True)
class Matrix:
    """A pairwise matrix ``<prefix><a>-<b>`` per step, drawn as heatmaps."""

    prefix: str
    title: str
    unit_range: bool  # cosines live on [-1, 1]; other matrices are scaled to their max |v|


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blurb: str
    items: tuple[Scalar | PerLanguage | Matrix, ...]


P = PREFIX
SECTIONS = (
    Section("losses", "Losses", "Training loss per language (from the per-language gradients) "
            "and validation loss and perplexity per language.", (
        PerLanguage((P + "loss/",), "Training loss per language", "loss"),
        PerLanguage(("val/loss/", P + "val_loss/"), "Validation loss per language", "loss"),
        PerLanguage(("val/ppl/", P + "val_ppl/"), "Validation perplexity per language", "ppl"),
        Scalar("train/loss", "Training loss (all languages)", "loss"),
        Scalar("val/loss", "Validation loss (mean over languages)", "loss"),
    )),
    Section("conflict", "Gradient conflict", "Share of language pairs whose gradients point "
            "against each other (cosine < 0), plain and weighted by gradient norms, and the "
            "smallest and mean pairwise cosine.", (
        Scalar(P + "conflict_rate", "Conflict rate", "fraction of pairs"),
        Scalar(P + "conflict_rate_weighted", "Conflict rate (norm-weighted)", "fraction"),
        Scalar(P + "cos_min", "Smallest pairwise cosine", "cosine"),
        Scalar(P + "cos_mean", "Mean pairwise cosine", "cosine"),
    )),
    Section("cosine", "Cosine similarity between language gradients", "Red: the two "
            "languages' gradients conflict; blue: they agree. Diagonal is 1 by definition.", (
        Matrix(P + "cos/", "cosine", unit_range=True),
    )),
    Section("affinity", "Inter-language affinity", "Entry (i, j): how a step on language "
            "i's gradient changes language j's loss (first-order estimate, and the exact "
            "look-ahead when logged). Blue helps, red hurts; scale symmetric about 0. "
            "Grey: not logged (the diagonal never is).", (
        Matrix(P + "affinity/", "affinity", unit_range=False),
        Matrix(P + "affinity_exact/", "affinity (exact)", unit_range=False),
    )),
    Section("weights", "MOO weights", "Weight the aggregator gave each language, and its "
            "spread across buckets.", (
        PerLanguage((P + "weight/",), "Weight per language", "weight"),
        PerLanguage((P + "weight_std/",), "Weight std across buckets", "std"),
    )),
    Section("gradients", "Gradients and gains", "Gradient norm per language and each "
            "language's first-order gain from the combined update.", (
        PerLanguage((P + "grad_norm/",), "Gradient norm per language", "L2 norm"),
        PerLanguage((P + "gain/",), "Gain per language", "gain"),
        PerLanguage((P + "gain_mean/",), "Mean gain per language", "gain"),
    )),
    Section("update", "Update", "Norm of the parameter update relative to the parameters.", (
        Scalar(P + "update_ratio", "Update ratio", "|Δθ| / |θ|"),
    )),
    Section("comm", "Communication", "Traffic and time of the gradient comm hook, and the "
            "extra memory it held.", (
        Scalar(P + "comm/bytes_sent", "Bytes sent per step", "bytes"),
        Scalar(P + "comm/hook_ms", "Hook time per step", "ms"),
        Scalar(P + "comm/peak_extra_mb", "Peak extra memory", "MB"),
    )),
)  # fmt: skip


def family_keys(run: Run, prefix: str) -> dict[str, str]:
    """``{suffix: key}`` for every logged key under ``prefix``, Lightning suffixes folded."""
    out: dict[str, str] = {}
    for key in sorted(run.metric_names()):
        if key.startswith(prefix) and "/" not in key[len(prefix) :]:
            name = key[len(prefix) :]
            for suffix in ("_step", "_epoch"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            # "loss" logged bare beats its "_step" twin; "_step" beats "_epoch" (sorted order).
            if name not in out or key == prefix + name:
                out[name] = key
    return out


def per_language(run: Run, prefixes: Iterable[str]) -> dict[str, str]:
    for prefix in prefixes:
        keys = family_keys(run, prefix)
        if keys:
            return keys
    return {}


def split_pair(name: str, known: set[str]) -> tuple[str, str] | None:
    """``"zh-Hans-en"`` -> ``("zh-Hans", "en")``: prefer a split into known languages."""
    cuts = [i for i, ch in enumerate(name) if ch == "-"]
    for i in cuts:
        if name[:i] in known and name[i + 1 :] in known:
            return name[:i], name[i + 1 :]
    return (name[: cuts[0]], name[cuts[0] + 1 :]) if cuts else None


def languages(runs: Sequence[Run]) -> list[str]:
    """Every language any per-language family mentions, sorted."""
    langs: set[str] = set()
    for run in runs:
        for section in SECTIONS:
            for item in section.items:
                if isinstance(item, PerLanguage):
                    for prefix in item.prefixes:
                        langs.update(family_keys(run, prefix))
    return sorted(langs, key=natural_key)


def matrices(run: Run, prefix: str, known: set[str]) -> dict[int, dict[tuple[str, str], float]]:
    """Per step with any entry, ``{(a, b): value}``; symmetric entries mirrored."""
    pairs = {}
    for name, key in family_keys(run, prefix).items():
        pair = split_pair(name, known)
        if pair:
            pairs[key] = pair
    directed = any((b, a) in pairs.values() for a, b in pairs.values() if a != b)
    out: dict[int, dict[tuple[str, str], float]] = {}
    for key, (a, b) in pairs.items():
        for step, v in zip(*run.series(key)):
            cells = out.setdefault(step, {})
            cells[(a, b)] = v
            if not directed:  # only a < b was logged: the matrix is symmetric
                cells.setdefault((b, a), v)
    return dict(sorted(out.items()))


def pick_steps(steps: Sequence[int], n: int) -> list[int]:
    """``n`` steps spread evenly from first to last, both included."""
    if len(steps) <= n:
        return list(steps)
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]


# ----------------------------------------------------------------------------------------
# Report


class _Builder:
    def __init__(self, runs: Sequence[Run], snapshots: int) -> None:
        self.runs = runs
        self.snapshots = max(2, snapshots)
        self.langs = languages(runs)
        self.known = set(self.langs)
        self.lang_colour = {
            lang: LANG_COLOURS[i % len(LANG_COLOURS)] for i, lang in enumerate(self.langs)
        }

    def run_colour(self, i: int) -> str:
        return RUN_COLOURS[i % len(RUN_COLOURS)]

    def scalar(self, item: Scalar) -> str:
        lines, missing = [], []
        for i, run in enumerate(self.runs):
            key = run.key_for(item.key)
            if key is None:
                missing.append(run.name)
                continue
            xs, ys = run.series(key)
            lines.append(Line(run.name, list(xs), list(ys), self.run_colour(i)))
        if not lines:
            return _note(f"<code>{esc(item.key)}</code> not logged; skipped.")
        fig = _figure(line_chart(item.title, lines, ylabel=item.ylabel), item.key)
        return fig + _missing_note(item.key, missing)

    def per_language(self, item: PerLanguage) -> str:
        found = [(run, per_language(run, item.prefixes)) for run in self.runs]
        found_any = [(run, keys) for run, keys in found if keys]
        pattern = " or ".join(f"<code>{esc(p)}&lt;lang&gt;</code>" for p in item.prefixes)
        if not found_any:
            return _note(f"{pattern} not logged; skipped.")
        all_ys = [y for run, keys in found_any for k in keys.values() for y in run.series(k)[1]]
        yrange = pad_range(min(all_ys), max(all_ys)) if all_ys else None
        figs = []
        # Three runs fit a row when drawn narrower; scaling them down would shrink the text.
        width = 560 if len(found_any) <= 2 else 420
        for run, keys in found_any:
            lines = [
                Line(lang, *map(list, run.series(key)), self.lang_colour.get(lang, "#333"))
                for lang, key in sorted(keys.items(), key=lambda kv: natural_key(kv[0]))
            ]
            title = f"{item.title} — {run.name}" if len(self.runs) > 1 else item.title
            figs.append(
                _figure(
                    line_chart(title, lines, ylabel=item.ylabel, yrange=yrange, width=width),
                    item.prefixes[0],
                )
            )
        missing = [run.name for run, keys in found if not keys]
        return (
            f'<div class="row" data-metric="{esc(item.prefixes[0])}">{"".join(figs)}</div>'
            + _missing_note(pattern, missing, escaped=True)
        )

    def matrix(self, item: Matrix) -> str:
        per_run = [(run, matrices(run, item.prefix, self.known)) for run in self.runs]
        per_run = [(run, m) for run, m in per_run if m]
        if not per_run:
            return _note(f"<code>{esc(item.prefix)}&lt;a&gt;-&lt;b&gt;</code> not logged; skipped.")
        if item.unit_range:
            vmax = 1.0
        else:
            vmax = max(abs(v) for _, m in per_run for cells in m.values() for v in cells.values())
            vmax = vmax or 1.0
        bar = colour_bar(vmax, item.title)
        blocks = []
        for run, by_step in per_run:
            labels = sorted({a for cells in by_step.values() for pair in cells for a in pair},
                            key=natural_key)  # fmt: skip
            if item.unit_range:  # a gradient's cosine with itself
                for cells in by_step.values():
                    for lang in labels:
                        cells.setdefault((lang, lang), 1.0)
            steps = list(by_step)
            shown = pick_steps(steps, self.snapshots)
            multiples = "".join(
                _figure(heatmap(f"{item.title} — step {s}", labels, by_step[s], vmax=vmax))
                for s in shown
            )
            frames_steps = pick_steps(steps, MAX_SLIDER_FRAMES)
            # Without JS (or before it runs) the last frame shows: the others start hidden.
            frames = "".join(
                f'<div class="frame" data-step="{s}"{"" if s == frames_steps[-1] else " hidden"}>'
                + heatmap(f"{item.title} — step {s}", labels, by_step[s], vmax=vmax)
                + "</div>"
                for s in frames_steps
            )
            player = (
                f'<div class="player"><label>step <input type="range" min="0" '
                f'max="{len(frames_steps) - 1}" value="{len(frames_steps) - 1}"> '
                f'<span class="step">{frames_steps[-1]}</span></label>{frames}</div>'
            )
            blocks.append(
                f'<div class="matrix-run" data-metric="{esc(item.prefix)}">'
                f"<h3>{esc(run.name)}</h3>"
                f'<div class="row multiples">{multiples}{_figure(bar)}</div>'
                f"<details><summary>Step through all {len(steps)} logged steps"
                f"{f' ({len(frames_steps)} shown)' if len(frames_steps) < len(steps) else ''}"
                f"</summary>{player}</details></div>"
            )
        drawn = {id(run) for run, _ in per_run}
        missing = [r.name for r in self.runs if id(r) not in drawn]
        return "".join(blocks) + _missing_note(f"{item.prefix}<a>-<b>", missing)

    def results_table(self) -> str:
        """Last validation loss / perplexity per language, one column pair per run."""
        head = (
            "".join(f'<th colspan="2">{esc(r.name)}</th>' for r in self.runs)
            + "</tr><tr>"
            + "<th>val loss</th><th>val ppl</th>" * len(self.runs)
        )
        body = []
        best: dict[str, float] = {}
        cells: dict[tuple[str, int], tuple[float | None, float | None, int | None]] = {}
        for i, run in enumerate(self.runs):
            loss_keys = per_language(run, ("val/loss/", P + "val_loss/"))
            ppl_keys = per_language(run, ("val/ppl/", P + "val_ppl/"))
            for lang in self.langs:
                loss = run.last(loss_keys[lang]) if lang in loss_keys else None
                ppl = run.last(ppl_keys[lang]) if lang in ppl_keys else None
                if ppl is None and loss is not None:
                    ppl = (loss[0], math.exp(min(loss[1], 50.0)))
                cells[(lang, i)] = (
                    loss[1] if loss else None,
                    ppl[1] if ppl else None,
                    loss[0] if loss else None,
                )
                if loss:
                    best[lang] = min(best.get(lang, math.inf), loss[1])
        rows_with_data = [
            lang for lang in self.langs if any(cells[(lang, i)][0] is not None
                                               for i in range(len(self.runs)))
        ]  # fmt: skip
        if not rows_with_data:
            return _note(
                "No per-language validation loss logged (<code>val/loss/&lt;lang&gt;"
                "</code> or <code>interference/val_loss/&lt;lang&gt;</code>)."
            )
        for lang in rows_with_data:
            tds = []
            for i in range(len(self.runs)):
                loss, ppl, step = cells[(lang, i)]
                cls = ' class="best"' if len(self.runs) > 1 and loss == best.get(lang) else ""
                tip = f' title="step {step}"' if step is not None else ""
                tds.append(f"<td{cls}{tip}>{'–' if loss is None else f'{loss:.4f}'}</td>")
                tds.append(f"<td{tip}>{'–' if ppl is None else f'{ppl:.3f}'}</td>")
            body.append(f"<tr><th>{esc(lang)}</th>{''.join(tds)}</tr>")
        # Means over the languages each run has, and the overall losses the module logged.
        mean_tds = []
        for i in range(len(self.runs)):
            vals = [cells[(lang, i)] for lang in rows_with_data if cells[(lang, i)][0] is not None]
            mean_tds.append(_num(sum(v[0] for v in vals) / len(vals) if vals else None, 4))
            ppls = [v[1] for v in vals if v[1] is not None]
            mean_tds.append(_num(sum(ppls) / len(ppls) if ppls else None, 3))
        body.append(f'<tr class="mean"><th>mean</th>{"".join(mean_tds)}</tr>')
        for key, label in (("val/loss", "val/loss (logged)"), ("train/loss", "train/loss (last)")):
            vals = [run.last(k) if (k := run.key_for(key)) else None for run in self.runs]
            if any(vals):
                tds = "".join(_num(v[1] if v else None, 4) + "<td></td>" for v in vals)
                body.append(f'<tr class="extra"><th>{esc(label)}</th>{tds}</tr>')
        note = (
            "<p class='hint'>Last logged value of each run; hover a cell for its step. "
            "Means are over the languages each run logged."
            + (" Bold: lowest validation loss among the runs." if len(self.runs) > 1 else "")
            + "</p>"
        )
        return (
            f'<table class="results"><thead><tr><th rowspan="2">language</th>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>{note}"
        )

    def overview(self) -> str:
        rows = []
        for run in self.runs:
            steps = list(run.by_step)
            span = f"{steps[0]}–{steps[-1]}" if steps else "–"
            n_langs = len(languages([run]))
            config = "".join(
                f"<tr><th>{esc(str(k))}</th><td>{esc(_short(v))}</td></tr>"
                for k, v in sorted(run.config.items(), key=lambda kv: str(kv[0]))
            )
            cfg = (
                f"<details><summary>{len(run.config)} entries</summary>"
                f'<table class="config">{config}</table></details>'
                if run.config
                else "–"
            )
            rows.append(
                f"<tr><th>{esc(run.name)}</th><td>{esc(run.source)}</td>"
                f"<td><code>{esc(str(run.path))}</code></td><td>{span}</td>"
                f"<td>{len(run.metric_names())}</td><td>{n_langs}</td><td>{cfg}</td></tr>"
            )
        return (
            '<table class="overview"><thead><tr><th>run</th><th>source</th><th>path</th>'
            "<th>steps</th><th>metrics</th><th>languages</th><th>config</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def section(self, section: Section) -> str:
        parts = []
        scalars: list[str] = []
        for item in section.items:
            if isinstance(item, Scalar):
                scalars.append(self.scalar(item))  # scalar charts share a row
                continue
            if scalars:
                parts.append(f'<div class="row">{"".join(scalars)}</div>')
                scalars = []
            parts.append(
                self.per_language(item) if isinstance(item, PerLanguage) else self.matrix(item)
            )
        if scalars:
            parts.append(f'<div class="row">{"".join(scalars)}</div>')
        return _section(
            section.id, section.title, f"<p class='hint'>{esc(section.blurb)}</p>" + "".join(parts)
        )


def build_report(
    runs: Sequence[Run], *, title: str = "lightning_bmoo run report", snapshots: int = 5
) -> str:
    """The report page for ``runs`` (compared side by side), as one HTML string.

    ``snapshots`` heatmaps per matrix family are drawn at evenly spaced steps, the last
    logged step included; every step is reachable through the slider below them.
    """
    if not runs:
        raise ValueError("build_report needs at least one run")
    b = _Builder(runs, snapshots)
    toc = [("overview", "Runs"), ("results", "Results")] + [(s.id, s.title) for s in SECTIONS]
    nav = " · ".join(f'<a href="#{i}">{esc(t)}</a>' for i, t in toc)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{esc(title)}</h1><p class='hint'>Generated {stamp} from "
        f"{len(runs)} run(s); languages: {esc(', '.join(b.langs) or 'none found')}. "
        "Dense curves: faint = logged values, solid = moving average; hover a curve or a "
        "cell for its values.</p>",
        f"<nav>{nav}</nav>",
        _section("overview", "Runs", b.overview()),
        _section("results", "Results", b.results_table()),
        *(b.section(s) for s in SECTIONS),
    ]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_JS}</script></body></html>"
    )


def _section(sid: str, title: str, content: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>'


def _figure(svg: str, metric: str = "") -> str:
    # Line charts carry their metric and may shrink to fit three runs in a row.
    attr = f' class="chart" data-metric="{esc(metric)}"' if metric else ""
    return f"<figure{attr}>{svg}</figure>"


def _note(text_html: str) -> str:
    return f'<p class="note">{text_html}</p>'


def _missing_note(what: str, missing: list[str], *, escaped: bool = False) -> str:
    if not missing:
        return ""
    shown = what if escaped else f"<code>{esc(what)}</code>"
    return _note(f"{shown} not logged in {esc(', '.join(missing))}.")


def _num(v: float | None, digits: int) -> str:
    return "<td>–</td>" if v is None else f"<td>{v:.{digits}f}</td>"


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "..."


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{margin:0 0 4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{margin:12px 0 4px;font-size:15px}
nav{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #eee;z-index:1}
nav a{color:#1f5fa8;text-decoration:none}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:4px;padding:4px}
figure.chart{flex:0 1 auto}
svg{max-width:100%;height:auto;display:block}
svg .title{font-size:13px;font-weight:600;text-anchor:middle}
svg .tick{font-size:11px;fill:#444}svg .axis{font-size:12px;fill:#222}
svg .legend{font-size:11px;fill:#222}
svg .val{font-size:10px;text-anchor:middle}
svg .plot{fill:#fafafa;stroke:#999}svg .grid{stroke:#e6e6e6}
svg .series{fill:none;stroke-width:1.6}svg .raw{stroke-width:1;opacity:.25}
svg .cell{stroke:#fff;stroke-width:1}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #e6ab02;padding:4px 8px}
.hint{color:#666;margin:4px 0 10px}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
table.overview td{text-align:left}
thead th{background:#f3f3f3;text-align:center}tbody th{text-align:left}
td.best{font-weight:700;background:#eaf4ea}tr.mean th,tr.mean td{border-top:2px solid #999}
table.config td,table.config th{font-size:12px;text-align:left}
.player label{display:block;margin:6px 0}.player input{width:320px;vertical-align:middle}
details summary{cursor:pointer;color:#1f5fa8;margin:4px 0}
"""

# Slider: show the frame the range input points at.
_JS = """
document.querySelectorAll('.player').forEach(function (p) {
  var frames = p.querySelectorAll('.frame'), input = p.querySelector('input'),
      label = p.querySelector('.step');
  input.addEventListener('input', function () {
    frames.forEach(function (f, j) { f.hidden = j !== +input.value; });
    label.textContent = frames[+input.value].dataset.step;
  });
});
"""
