"""The report's HTML tables: the runs, their last validation results, their conflicting groups."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape as esc
from pathlib import Path

from .. import vocabulary as vocab
from .families import Logged, languages, monitor, per_language
from .sources import Run

_VAL_LOSS = (Logged(vocab.MODULE_VAL_LOSS), monitor(vocab.VAL_LOSS))
_VAL_PPL = (Logged(vocab.MODULE_VAL_PPL), monitor(vocab.VAL_PPL))
_COLUMNS = list(vocab.CONFLICT_COLUMNS)


def note(text_html: str) -> str:
    """A yellow note (``text_html`` is already escaped)."""
    return f'<p class="note">{text_html}</p>'


def status(run: Run) -> str:
    """How complete the run's log is, in words."""
    if run.problem:
        return "incomplete log: read up to the damage"
    if run.finished is False:
        return "unfinished: no exit record"
    return "finished" if run.finished else "– (CSV logs have no end marker)"


def overview(runs: Sequence[Run], failed: Sequence[tuple[Path, str]]) -> str:
    """One row per run (source, path, steps, status, config), and one per unreadable run."""
    rows = []
    for run in runs:
        steps = list(run.by_step)
        span = f"{steps[0]}–{steps[-1]}" if steps else "–"
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
        source = esc(run.source)
        if run.duplicates:
            also = ", ".join(f"<code>{esc(str(p))}</code>" for p in run.duplicates)
            source += f'<br><span class="hint">shown once; the same run also in {also}</span>'
        rows.append(
            f'<tr class="run"><th>{esc(run.name)}</th><td>{source}</td>'
            f"<td><code>{esc(str(run.path))}</code></td><td>{span}</td>"
            f'<td class="status">{esc(status(run))}</td>'
            f"<td>{len(run.metric_names())}</td><td>{len(languages([run]))}</td><td>{cfg}</td></tr>"
        )
    for path, error in failed:
        rows.append(
            f'<tr class="failed"><th>–</th><td>–</td><td><code>{esc(str(path))}</code></td>'
            f'<td>–</td><td class="status">not readable: {esc(error)}</td>'
            "<td>–</td><td>–</td><td>–</td></tr>"
        )
    return (
        '<table class="overview"><thead><tr><th>run</th><th>source</th><th>path</th>'
        "<th>steps</th><th>log</th><th>metrics</th><th>languages</th><th>config</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def results(runs: Sequence[Run], langs: Sequence[str]) -> str:
    """Last validation loss / perplexity per language, one column pair per run."""
    head = (
        "".join(f'<th colspan="2">{esc(r.name)}</th>' for r in runs)
        + "</tr><tr>"
        + "<th>val loss</th><th>val ppl</th>" * len(runs)
    )
    body = []
    best: dict[str, float] = {}
    cells: dict[tuple[str, int], tuple[float | None, float | None, int | None]] = {}
    for i, run in enumerate(runs):
        loss_keys = per_language(run, _VAL_LOSS)[1]
        ppl_keys = per_language(run, _VAL_PPL)[1]
        for lang in langs:
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
        lang for lang in langs if any(cells[(lang, i)][0] is not None for i in range(len(runs)))
    ]
    if not rows_with_data:
        patterns = " or ".join(f"<code>{esc(x.pattern)}</code>" for x in _VAL_LOSS)
        return note(f"No per-language validation loss logged ({patterns}).")
    for lang in rows_with_data:
        tds = []
        for i in range(len(runs)):
            loss, ppl, step = cells[(lang, i)]
            cls = ' class="best"' if len(runs) > 1 and loss == best.get(lang) else ""
            tip = f' title="step {step}"' if step is not None else ""
            tds.append(f"<td{cls}{tip}>{'–' if loss is None else f'{loss:.4f}'}</td>")
            tds.append(f"<td{tip}>{'–' if ppl is None else f'{ppl:.3f}'}</td>")
        body.append(f"<tr><th>{esc(lang)}</th>{''.join(tds)}</tr>")
    # Means over the languages each run has, and the overall losses the module logged.
    mean_tds = []
    for i in range(len(runs)):
        vals = [cells[(lang, i)] for lang in rows_with_data if cells[(lang, i)][0] is not None]
        mean_tds.append(_num(sum(v[0] for v in vals) / len(vals) if vals else None, 4))
        ppls = [v[1] for v in vals if v[1] is not None]
        mean_tds.append(_num(sum(ppls) / len(ppls) if ppls else None, 3))
    body.append(f'<tr class="mean"><th>mean</th>{"".join(mean_tds)}</tr>')
    for metric, label in ((vocab.VAL_LOSS_MEAN, "(logged)"), (vocab.TRAIN_LOSS, "(last)")):
        vals = [run.last(k) if (k := run.key_for(metric.family)) else None for run in runs]
        if any(vals):
            tds = "".join(_num(v[1] if v else None, 4) + "<td></td>" for v in vals)
            body.append(f'<tr class="extra"><th>{esc(metric.family)} {label}</th>{tds}</tr>')
    hint = (
        "<p class='hint'>Last logged value of each run; hover a cell for its step. "
        "Means are over the languages each run logged."
        + (" Bold: lowest validation loss among the runs." if len(runs) > 1 else "")
        + "</p>"
    )
    return (
        f'<table class="results"><thead><tr><th rowspan="2">language</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table>{hint}"
    )


def conflicts(runs: Sequence[Run]) -> str:
    """Each run's last logged table of its most conflicting groups (W&B runs only)."""
    key = monitor(vocab.CONFLICTS).name
    blocks, without = [], []
    for run in runs:
        logged = run.tables.get(key)
        if not logged:
            without.append(run.name)
            continue
        step, path = logged[-1]
        try:
            table = json.loads(path.read_text())
            columns, data = table["columns"], table["data"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            blocks.append(
                f"<h3>{esc(run.name)}</h3>"
                + note(f"The table logged at step {step} is unreadable: {esc(str(error))}.")
            )
            continue
        rows = [dict(zip(columns, row)) for row in data]
        # Tables logged before conflicts were restricted to negative cosines may hold others.
        rows = [r for r in rows if isinstance(r.get("cosine"), (int, float)) and r["cosine"] < 0]
        head = f"<h3>{esc(run.name)}: logging step {step}</h3>"
        if not rows:
            blocks.append(head + f'<p class="empty">No conflicting group at step {step}.</p>')
            continue
        cells = "".join(
            "<tr>" + "".join(f"<td>{esc(_cell(r.get(c)))}</td>" for c in _COLUMNS) + "</tr>"
            for r in rows
        )
        th = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
        blocks.append(
            f'{head}<table class="conflicts" data-run="{esc(run.name)}"><thead><tr>{th}</tr>'
            f"</thead><tbody>{cells}</tbody></table>"
        )
    if without:
        blocks.append(
            note(
                f"<code>{esc(key)}</code> not logged in {esc(', '.join(without))}: the monitor "
                "logs this table to W&amp;B only."
            )
        )
    return "".join(blocks)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, str) and len(v) > 80:  # a bucket's parameter list can be long
        return v[:77] + "..."
    return "–" if v is None else str(v)


def _num(v: float | None, digits: int) -> str:
    return "<td>–</td>" if v is None else f"<td>{v:.{digits}f}</td>"


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "..."
