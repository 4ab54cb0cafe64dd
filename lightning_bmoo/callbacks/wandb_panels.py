"""W&B side of the interference dashboard: metric definitions, heatmaps and tables.

Heatmaps need matplotlib and Pillow (``wandb.Image`` of a figure); both are imported only
when a heatmap is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import vocabulary as vocab
from .figures import GroupConflict, Interference, pair_matrix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: W&B's step axis under Lightning's WandbLogger.
STEP_METRIC = vocab.STEP_METRIC


def define_metrics(run: Any, prefix: str) -> None:
    """Declares the monitor's metrics: the trainer's step as x axis, min/max in the summary.

    The summaries are the vocabulary's (``Metric.summary``): what a reader looks for first in
    the run table.

    Args:
        run: a ``wandb`` run (``WandbLogger.experiment``).
        prefix: the monitor's metric prefix, e.g. ``"interference/"``.
    """
    run.define_metric(STEP_METRIC)
    run.define_metric(f"{prefix}*", step_metric=STEP_METRIC)
    for metric in vocab.MONITOR_METRICS:
        if metric.summary:
            run.define_metric(
                f"{prefix}{metric.glob}", step_metric=STEP_METRIC, summary=metric.summary
            )


# Values are written into the cells of matrices up to 10 x 10: every text costs milliseconds
# to lay out and draw, and beyond that the numbers are unreadable (the scalars carry them).
_MAX_ANNOTATED = 100
_MAX_INCHES = 14.0
# The group heatmap shows the most conflicting groups and, at many languages, the pairs
# that conflict most among them (T = 16 has 120 pairs).
_MAX_GROUPS = 40
_MAX_PAIRS = 24


def heatmap(
    matrix: Tensor,
    labels: Sequence[str],
    title: str,
    *,
    columns: Sequence[str] | None = None,
    symmetric: bool = True,
) -> Figure:
    """A labelled heatmap of ``matrix`` (NaN cells left blank), values written in the cells.

    Args:
        matrix: ``R x C`` values.
        labels: row labels (and column labels unless ``columns`` is given).
        title: the figure's title.
        columns: column labels.
        symmetric: centre the colour scale on 0 (red negative, blue positive).

    Raises:
        ImportError: if matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "InterferenceMonitor's W&B heatmaps need matplotlib and Pillow: "
            "pip install matplotlib Pillow (or InterferenceMonitor(heatmaps=False))."
        ) from error
    columns = list(labels if columns is None else columns)
    values = matrix.detach().to(torch.float64).cpu().numpy()
    finite = values[~_isnan(values)]
    scale = float(abs(finite).max()) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    rows, cols = values.shape
    # Figure() rather than pyplot: no global state, no GUI backend, nothing to close.
    # Sized for the text as well as the cells: with long group keys or a long title on a
    # small matrix, constrained layout otherwise has no room left and warns at every draw.
    # Large matrices get smaller cells: the image's pixels (and its encoding) stay bounded.
    row_text = max((len(str(label)) for label in labels), default=0)
    column_text = max((len(str(label)) for label in columns), default=0)
    rotated = cols > 6
    width = max(1.2 + 0.55 * cols + 0.075 * row_text, 0.085 * len(title) + 0.5)
    height = 1.4 + 0.45 * rows + (0.05 * column_text if rotated else 0.0)
    width, height = min(width, _MAX_INCHES), min(height, _MAX_INCHES)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        values,
        cmap="RdBu" if symmetric else "viridis",
        vmin=-scale if symmetric else None,
        vmax=scale if symmetric else None,
        aspect="auto",
    )
    ax.set_xticks(range(cols), columns, rotation=45 if rotated else 0, ha="right")
    ax.set_yticks(range(rows), list(labels))
    ax.set_title(title)
    if rows * cols <= _MAX_ANNOTATED:
        for r in range(rows):
            for c in range(cols):
                if not math.isnan(values[r, c]):
                    ax.text(c, r, f"{values[r, c]:.2g}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def dashboard_heatmaps(
    cosines: dict[tuple[str, str], float],
    affinity: dict[tuple[str, str], float],
    languages: Sequence[str],
    last: Interference | None,
) -> dict[str, Figure]:
    """The interval's heatmaps, by panel name: whole-model cosines, first-order affinities
    (when known), and the per-group cosines of the last step (when some group conflicts).

    Args:
        cosines: interval-mean cosine of each language pair ``(a, b)``, ``a < b``.
        affinity: interval-mean affinity of each ordered pair ``(i, j)``.
        languages: rows and columns, in order.
        last: the last step's figures.
    """
    cos = {(lang, lang): 1.0 for lang in languages}
    for (a, b), value in cosines.items():
        cos[a, b] = cos[b, a] = value
    images = {
        vocab.COS_HEATMAP.family: heatmap(
            pair_matrix(cos, list(languages)), languages, vocab.COS_HEATMAP.title
        )
    }
    if affinity:
        images[vocab.AFFINITY_HEATMAP.family] = heatmap(
            pair_matrix(affinity, list(languages)), languages, vocab.AFFINITY_HEATMAP.title
        )
    if last is not None and last.conflicts:
        images[vocab.GROUP_COS_HEATMAP.family] = _group_heatmap(last)
    return images


def _group_heatmap(fig: Interference) -> Figure:
    tasks = fig.tasks
    pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
    # Large models have hundreds of groups: show the most conflicting ones only.
    keys = list(dict.fromkeys(c.key for c in fig.conflicts[:_MAX_GROUPS]))
    position = {key: g for g, key in enumerate(fig.group_keys)}
    shown = fig.group_cos[[position[k] for k in keys]]  # groups x T x T
    values = torch.stack([shown[:, i, j] for i, j in pairs], dim=1)  # groups x pairs
    if len(pairs) > _MAX_PAIRS:
        lowest = torch.nan_to_num(values, nan=math.inf).amin(0)
        keep = sorted(lowest.argsort()[:_MAX_PAIRS].tolist())
        values, pairs = values[:, keep], [pairs[p] for p in keep]
    return heatmap(
        values,
        keys,
        f"{vocab.GROUP_COS_HEATMAP.title}, step {fig.step} (most conflicting first)",
        columns=[vocab.pair_name(tasks[i], tasks[j]) for i, j in pairs],
    )


def _isnan(values: Any) -> Any:
    return values != values  # numpy without importing it


def conflict_rows(conflicts: Sequence[GroupConflict]) -> list[list[Any]]:
    """Table rows ``[step, group, parameters, pair, cosine, numel]``, most conflicting first.

    The pair is written ``a|b`` (:func:`lightning_bmoo.vocabulary.pair_name`).
    """
    return [
        [c.step, c.key, ", ".join(c.param_names), vocab.pair_name(*c.pair), c.cosine, c.numel]
        for c in conflicts
    ]


#: Columns of :func:`conflict_rows`.
CONFLICT_COLUMNS = list(vocab.CONFLICT_COLUMNS)


def log_panels(
    run: Any,
    prefix: str,
    step: int,
    *,
    images: dict[str, Figure],
    conflicts: Sequence[GroupConflict],
) -> None:
    """Logs heatmaps and the conflict tables in one ``run.log`` call.

    Args:
        run: a ``wandb`` run.
        prefix: the metric prefix.
        step: the trainer's global step (W&B's x axis).
        images: heatmaps by name (logged as ``{prefix}{name}``).
        conflicts: the conflicting groups (negative cosine), most negative first; the first is
            also logged as the ``worst_group`` table. Without any, both tables are logged
            empty, so that no panel keeps showing an older interval's conflicts.
    """
    import wandb

    payload: dict[str, Any] = {STEP_METRIC: step}
    for name, fig in images.items():
        payload[f"{prefix}{name}"] = wandb.Image(fig)
    rows = conflict_rows(conflicts)
    payload[f"{prefix}{vocab.CONFLICTS.family}"] = wandb.Table(columns=CONFLICT_COLUMNS, data=rows)
    payload[f"{prefix}{vocab.WORST_GROUP.family}"] = wandb.Table(
        columns=CONFLICT_COLUMNS, data=rows[:1]
    )
    run.log(payload)
