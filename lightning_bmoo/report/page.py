"""A self-contained HTML report of one or more runs' interference metrics.

Figures are inline SVG (:mod:`.svg`), so the page needs no network, no JS library and no
plotting package; a few lines of inline JS drive the heatmap sliders, and the page reads
fine without them (the last step is shown).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape as esc
from pathlib import Path

from . import tables
from .families import (
    SECTIONS,
    Logged,
    Matrix,
    PerLanguage,
    Scalar,
    Section,
    languages,
    matrices,
    natural_key,
    per_language,
    pick_steps,
    unreadable_keys,
)
from .sources import Run
from .svg import (
    LANG_COLOURS,
    RUN_COLOURS,
    Line,
    colour_bar,
    heatmap,
    line_chart,
    pad_range,
)
from .tables import note

MAX_SLIDER_FRAMES = 60


class _Builder:
    def __init__(self, runs: Sequence[Run], snapshots: int) -> None:
        self.runs = runs
        self.snapshots = max(2, snapshots)
        self.langs = languages(runs)
        self.lang_colour = {
            lang: LANG_COLOURS[i % len(LANG_COLOURS)] for i, lang in enumerate(self.langs)
        }

    def scalar(self, item: Scalar) -> str:
        metric, name = item.logged.metric, item.logged.name
        lines, missing = [], []
        for i, run in enumerate(self.runs):
            key = run.key_for(name)
            if key is None:
                missing.append(run.name)
                continue
            xs, ys = run.series(key)
            lines.append(Line(run.name, list(xs), list(ys), RUN_COLOURS[i % len(RUN_COLOURS)]))
        if not lines:
            return note(f"<code>{esc(name)}</code> not logged; skipped.")
        chart = line_chart(metric.title, lines, ylabel=metric.unit)
        caption = f"<figcaption><code>{esc(name)}</code>: {esc(metric.meaning)}</figcaption>"
        return _figure(chart, name, caption) + _missing_note(f"<code>{esc(name)}</code>", missing)

    def per_language(self, item: PerLanguage) -> str:
        found = [(run, *per_language(run, item.alternatives)) for run in self.runs]
        found_any = [(run, logged, keys) for run, logged, keys in found if keys]
        pattern = " or ".join(f"<code>{esc(x.pattern)}</code>" for x in item.alternatives)
        if not found_any:
            return note(f"{pattern} not logged; skipped.")
        all_ys = [y for run, _, keys in found_any for k in keys.values() for y in run.series(k)[1]]
        yrange = pad_range(min(all_ys), max(all_ys)) if all_ys else None
        figs = []
        # Three runs fit a row when drawn narrower; scaling them down would shrink the text.
        width = 560 if len(found_any) <= 2 else 420
        for run, logged, keys in found_any:
            lines = [
                Line(lang, *map(list, run.series(key)), self.lang_colour.get(lang, "#333"))
                for lang, key in sorted(keys.items(), key=lambda kv: natural_key(kv[0]))
            ]
            metric = logged.metric
            title = f"{metric.title} — {run.name}" if len(self.runs) > 1 else metric.title
            chart = line_chart(title, lines, ylabel=metric.unit, yrange=yrange, width=width)
            figs.append(_figure(chart, logged.pattern))
        used = found_any[0][1]
        missing = [run.name for run, _, keys in found if not keys]
        return (
            _meaning(used)
            + f'<div class="row" data-metric="{esc(used.pattern)}">{"".join(figs)}</div>'
            + (f"<p class='hint figure-note'>{esc(item.note)}</p>" if item.note else "")
            + _missing_note(pattern, missing)
        )

    def matrix(self, item: Matrix) -> str:
        logged = item.logged
        per_run = [(run, matrices(run, logged)) for run in self.runs]
        odd = {run.name: unreadable_keys(run, logged) for run in self.runs}
        odd_note = "".join(
            note(
                f"{esc(name)}: {len(keys)} key(s) such as <code>{esc(keys[0])}</code> name no "
                f"language pair <code>{esc(logged.pattern)}</code> (logged by an older "
                "version?); left out."
            )
            for name, keys in odd.items()
            if keys
        )
        per_run = [(run, m) for run, m in per_run if m]
        if not per_run:
            return note(f"<code>{esc(logged.pattern)}</code> not logged; skipped.") + odd_note
        if item.unit_range:
            vmax = 1.0
        else:
            vmax = max(abs(v) for _, m in per_run for cells in m.values() for v in cells.values())
            vmax = vmax or 1.0
        name = logged.metric.title
        bar = colour_bar(vmax, name)
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
            frames_steps = pick_steps(steps, MAX_SLIDER_FRAMES)
            drawn_at = {
                s: heatmap(f"{name} — step {s}", labels, by_step[s], vmax=vmax)
                for s in {*shown, *frames_steps}
            }
            multiples = "".join(_figure(drawn_at[s]) for s in shown)
            # Without JS (or before it runs) the last frame shows: the others start hidden.
            frames = "".join(
                f'<div class="frame" data-step="{s}"{"" if s == frames_steps[-1] else " hidden"}>'
                + drawn_at[s]
                + "</div>"
                for s in frames_steps
            )
            player = (
                f'<div class="player"><label>step <input type="range" min="0" '
                f'max="{len(frames_steps) - 1}" value="{len(frames_steps) - 1}"> '
                f'<span class="step">{frames_steps[-1]}</span></label>{frames}</div>'
            )
            blocks.append(
                f'<div class="matrix-run" data-metric="{esc(logged.pattern)}">'
                f"<h3>{esc(run.name)}</h3>"
                f'<div class="row multiples">{multiples}{_figure(bar)}</div>'
                f"<details><summary>Step through all {len(steps)} logged steps"
                f"{f' ({len(frames_steps)} shown)' if len(frames_steps) < len(steps) else ''}"
                f"</summary>{player}</details></div>"
            )
        drawn = {id(run) for run, _ in per_run}
        missing = [r.name for r in self.runs if id(r) not in drawn]
        return (
            _meaning(logged)
            + "".join(blocks)
            + _missing_note(f"<code>{esc(logged.pattern)}</code>", missing)
            + odd_note
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


def banners(runs: Sequence[Run], failed: Sequence[tuple[Path, str]]) -> str:
    """What the reader must know before trusting the page: damaged, unfinished, left out."""
    out = []
    for run in runs:
        if run.problem:
            last = max(run.by_step, default=None)
            out.append(
                f'<p class="banner incomplete"><b>Incomplete log</b> — {esc(run.name)}: '
                f"{esc(run.problem)}. Shown: what was logged before the damage"
                f"{'' if last is None else f' (up to step {last})'}.</p>"
            )
        elif run.finished is False:
            out.append(
                f'<p class="banner unfinished"><b>Unfinished run</b> — {esc(run.name)}: its W&amp;B'
                " log has no exit record (the run is still going, or was killed).</p>"
            )
    for path, error in failed:
        out.append(
            f'<p class="banner failed"><b>Left out</b> — <code>{esc(str(path))}</code>: '
            f"{esc(error)}</p>"
        )
    return f'<div class="banners">{"".join(out)}</div>' if out else ""


def build_report(
    runs: Sequence[Run],
    *,
    title: str = "lightning_bmoo run report",
    snapshots: int = 5,
    failed: Sequence[tuple[Path, str]] = (),
) -> str:
    """The report page for ``runs`` (compared side by side), as one HTML string.

    Args:
        runs: the runs (``load_runs``).
        title: the page's title.
        snapshots: heatmaps drawn per matrix family at evenly spaced steps, the last logged
            step included; every step is reachable through the slider below them.
        failed: ``(path, error)`` of runs that could not be read, listed in the page.

    Raises:
        ValueError: if ``runs`` is empty.
    """
    if not runs:
        raise ValueError("build_report needs at least one run")
    b = _Builder(runs, snapshots)
    parts = [
        ("overview", "Runs", tables.overview(runs, failed)),
        ("results", "Results", tables.results(runs, b.langs)),
    ]
    for section in SECTIONS:
        parts.append((section.id, section.title, b.section(section)))
        if section.id == "cosine":  # the tables say where the red cells come from
            parts.append(
                ("groups", "Most conflicting groups", _GROUPS_HINT + tables.conflicts(runs))
            )
    nav = " · ".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in parts)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{esc(title)}</h1><p class='hint'>Generated {stamp} from "
        f"{len(runs)} run(s); languages: {esc(', '.join(b.langs) or 'none found')}. "
        "Dense curves: faint = logged values, solid = moving average; hover a curve or a "
        "cell for its values.</p>",
        banners(runs, failed),
        f"<nav>{nav}</nav>",
        *(_section(*part) for part in parts),
    ]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_JS}</script></body></html>"
    )


def _section(sid: str, title: str, content: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>'


def _figure(svg: str, metric: str = "", caption: str = "") -> str:
    # Line charts carry their metric and may shrink to fit three runs in a row.
    attr = f' class="chart" data-metric="{esc(metric)}"' if metric else ""
    return f"<figure{attr}>{svg}{caption}</figure>"


def _meaning(logged: Logged) -> str:
    return (
        f'<p class="meaning"><code>{esc(logged.pattern)}</code>: {esc(logged.metric.meaning)}</p>'
    )


def _missing_note(what_html: str, missing: list[str]) -> str:
    return note(f"{what_html} not logged in {esc(', '.join(missing))}.") if missing else ""


_GROUPS_HINT = (
    "<p class='hint'>The groups (buckets or parameters) whose two languages' gradients pointed "
    "most against each other in the last logged interval; only negative cosines. Steps are "
    "the trainer's global step, as on every chart.</p>"
)

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{margin:0 0 4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{margin:12px 0 4px;font-size:15px}
nav{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #eee;z-index:1}
nav a{color:#1f5fa8;text-decoration:none}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:4px;padding:4px}
figure.chart{flex:0 1 auto}
figcaption,.meaning{color:#555;font-size:12px;max-width:560px}
figcaption{padding:2px 4px}.meaning{margin:8px 0 4px}
svg{max-width:100%;height:auto;display:block}
svg .title{font-size:13px;font-weight:600;text-anchor:middle}
svg .tick{font-size:11px;fill:#444}svg .axis{font-size:12px;fill:#222}
svg .legend{font-size:11px;fill:#222}
svg .val{font-size:10px;text-anchor:middle}
svg .plot{fill:#fafafa;stroke:#999}svg .grid{stroke:#e6e6e6}
svg .series{fill:none;stroke-width:1.6}svg .raw{stroke-width:1;opacity:.25}
svg .cell{stroke:#fff;stroke-width:1}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #e6ab02;padding:4px 8px}
.banner{color:#7a1010;background:#fdecea;border-left:4px solid #c62828;padding:6px 10px}
.hint{color:#666;margin:4px 0 10px}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
table.overview td,table.conflicts td{text-align:left}
thead th{background:#f3f3f3;text-align:center}tbody th{text-align:left}
td.best{font-weight:700;background:#eaf4ea}tr.mean th,tr.mean td{border-top:2px solid #999}
tr.failed td{color:#7a1010}
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
