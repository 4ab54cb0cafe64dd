"""W&B heatmaps stay cheap at many languages: bounded size, numbers only where readable."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.callbacks import wandb_panels
from lightning_bmoo.callbacks.figures import interference
from lightning_bmoo.comm.stats import GroupStats, StepStats

pytest.importorskip("matplotlib")


def _many_languages(T: int, groups: int) -> StepStats:
    g = torch.Generator().manual_seed(0)
    tasks = [f"x{t:02d}" for t in range(T)]
    stats = StepStats(step=3, slots=tasks, tasks=tasks)
    for k in range(groups):
        rows = torch.randn(T, 8, generator=g, dtype=torch.float64)  # 8 < T: conflicts abound
        gram = rows @ rows.T
        stats.groups.append(
            GroupStats(
                f"layers.{k}.weight",
                8,
                (gram + gram.T) / 2,
                torch.ones(T, dtype=torch.bool),
                torch.full((T,), 1.0 / T, dtype=torch.float64),
            )
        )
    return stats


def _texts(figure) -> int:
    return len(figure.axes[0].texts)


@pytest.mark.parametrize("T", [4, 16])
def test_heatmaps_at_many_languages_stay_small_and_drop_unreadable_numbers(T):
    # 16 languages: 120 pairs and hundreds of groups would make a 67 x 19 inch group heatmap
    # and thousands of cell texts, seconds of drawing per logging step.
    fig = interference(_many_languages(T, groups=60))
    tasks = fig.tasks
    cos = {(a, b): float(fig.cos[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks)}
    images = wandb_panels.dashboard_heatmaps(cos, cos, tasks, fig)
    assert set(images) == {"cos_heatmap", "affinity_heatmap", "group_cos_heatmap"}
    for image in images.values():
        width, height = image.get_size_inches()
        assert width <= 14.0 and height <= 14.0
    group = images["group_cos_heatmap"].axes[0]
    pairs = T * (T - 1) // 2
    assert len(group.get_xticklabels()) == min(pairs, 24)
    assert len(group.get_yticklabels()) == min(len(fig.conflicts), 40)
    cells = T * T
    assert _texts(images["cos_heatmap"]) == (cells if cells <= 100 else 0)


def test_the_group_heatmap_keeps_the_most_conflicting_pair():
    fig = interference(_many_languages(16, groups=60))
    group = wandb_panels._group_heatmap(fig)
    shown = [label.get_text() for label in group.axes[0].get_xticklabels()]
    worst = fig.conflicts[0].pair
    assert f"{worst[0]}|{worst[1]}" in shown
    assert shown == sorted(shown)  # in pair order, as at few languages
