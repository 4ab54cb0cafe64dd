"""Figures from Gramians equal the same figures computed on explicit gradient vectors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.callbacks.figures import (
    cosines,
    interference,
    pair_matrix,
    step_dots,
    step_scalars,
    tag_affinity,
)
from lightning_bmoo.comm.stats import GroupStats, StepStats

TASKS = ["de", "en", "fr"]


def explicit_step(seed: int = 0, zero: tuple[int, int] | None = (2, 1)):
    """Per-group gradient matrices (T x n_g), weights, and the StepStats the hook would record.

    ``zero=(group, task)`` makes that task's row zero there (a parameter it never touches).
    """
    g = torch.Generator().manual_seed(seed)
    sizes = [5, 3, 7, 2]
    rows = [torch.randn(len(TASKS), n, generator=g, dtype=torch.float64) for n in sizes]
    rows[1][1] = -rows[1][0] + 0.1 * rows[1][1]  # a strong conflict de/en in group 1
    if zero is not None:
        rows[zero[0]][zero[1]] = 0.0
    groups, weights = [], []
    for index, G in enumerate(rows):
        active = G.abs().sum(1) > 0
        w = torch.rand(len(TASKS), generator=g, dtype=torch.float64) * active
        weights.append(w)
        groups.append(
            GroupStats(f"g{index}", G.shape[1], G @ G.T, active, w, [f"p{index}a", f"p{index}b"])
        )
    # en fills two of the four slots: plain DDP weighs it twice.
    stats = StepStats(step=7, slots=["en", "de", "en", "fr"], tasks=TASKS, groups=groups)
    return rows, weights, stats


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def test_whole_model_figures_match_explicit_gradients():
    rows, weights, stats = explicit_step()
    fig = interference(stats)
    g = torch.cat(rows, dim=1)  # T x n: each language's whole gradient
    d = torch.cat([w @ G for w, G in zip(weights, rows)])
    shares = torch.tensor([1, 2, 1], dtype=torch.float64) / 4
    g_mean = shares @ g
    for i in range(3):
        assert fig.grad_norm[i] == pytest.approx(float(g[i].norm()))
        assert fig.gain[i] == pytest.approx(float(g[i] @ d))
        assert fig.gain_mean[i] == pytest.approx(float(g[i] @ g_mean))
        for j in range(3):
            assert fig.dot[i, j] == pytest.approx(float(g[i] @ g[j]))
            assert fig.cos[i, j] == pytest.approx(_cos(g[i], g[j]))
    assert fig.update_norm == pytest.approx(float(d.norm()))
    assert fig.update_ratio == pytest.approx(float(d.norm() / g_mean.norm()))


def test_group_figures_skip_inactive_languages():
    rows, _, stats = explicit_step()
    fig = interference(stats)
    values, sizes = [], []
    for G in rows:
        for i in range(3):
            for j in range(i + 1, 3):
                if G[i].abs().sum() > 0 and G[j].abs().sum() > 0:
                    values.append(_cos(G[i], G[j]))
                    sizes.append(G.shape[1])
    assert len(values) == 3 * 4 - 2  # the zero row of en in group 2 leaves two pairs out
    values_t = torch.tensor(values)
    negative = values_t < 0
    assert fig.cos_min == pytest.approx(min(values))
    assert fig.cos_mean == pytest.approx(float(values_t.mean()))
    assert fig.conflict_rate == pytest.approx(float(negative.double().mean()))
    weighted = sum(n for n, neg in zip(sizes, negative) if neg) / sum(sizes)
    assert fig.conflict_rate_weighted == pytest.approx(weighted)
    assert torch.isnan(fig.group_cos[2, 1]).all()
    worst = fig.conflicts[0]
    assert (worst.key, worst.pair, worst.step) == ("g1", ("de", "en"), 7)
    assert worst.param_names == ("p1a", "p1b")
    assert worst.cosine == pytest.approx(min(values))
    assert [c.cosine for c in fig.conflicts] == sorted(c.cosine for c in fig.conflicts)


def test_conflicts_are_negative_cosines_labelled_with_the_given_step():
    rows, _, stats = explicit_step()
    fig = interference(stats, step=8)  # the trainer's step: one ahead of the hook's 7
    group_cos = {
        f"g{g}": min(
            _cos(G[i], G[j])
            for i in range(3)
            for j in range(i + 1, 3)
            if G[i].abs().sum() > 0 and G[j].abs().sum() > 0
        )
        for g, G in enumerate(rows)
    }
    expected = sorted(key for key, cos in group_cos.items() if cos < 0)
    assert 0 < len(expected) < len(rows)  # the fixture has agreeing groups too
    assert sorted(c.key for c in fig.conflicts) == expected
    assert all(c.cosine < 0 and c.step == 8 for c in fig.conflicts)
    assert fig.step == 8 and interference(stats).step == 7


def test_no_conflict_when_every_pair_agrees():
    G = torch.tensor([[1.0, 0.2], [0.8, 0.5]], dtype=torch.float64)
    stats = StepStats(
        step=0,
        slots=["a", "b"],
        tasks=["a", "b"],
        groups=[GroupStats("g", 2, G @ G.T, torch.tensor([True, True]), torch.tensor([0.5, 0.5]))],
    )
    fig = interference(stats)
    assert fig.cos_min > 0 and fig.conflicts == []


def test_weights_average_over_active_groups():
    _, weights, stats = explicit_step()
    fig = interference(stats)
    W = torch.stack(weights)
    en = W[[0, 1, 3], 1]  # en is inactive in group 2
    assert fig.weight[1] == pytest.approx(float(en.mean()))
    assert fig.weight_std[1] == pytest.approx(float(en.std(unbiased=False)))
    assert fig.weight[0] == pytest.approx(float(W[:, 0].mean()))


def test_scalar_names_and_dots():
    _, _, stats = explicit_step()
    fig = interference(stats)
    scalars = step_scalars(fig)
    for name in ("cos/de|en", "cos/de|fr", "cos/en|fr", "grad_norm/fr", "weight/en",
                 "weight_std/de", "gain/fr", "gain_mean/en", "cos_min", "cos_mean",
                 "conflict_rate", "conflict_rate_weighted", "update_ratio"):  # fmt: skip
        assert name in scalars
    assert "cos/en|de" not in scalars
    # Every name is one of the vocabulary's, languages recoverable from it.
    for name in scalars:
        assert any(m.languages_of(name) is not None for m in vocab.MONITOR_METRICS), name
    dots = step_dots(fig)
    assert dots["de", "fr"] == dots["fr", "de"] == pytest.approx(float(fig.dot[0, 2]))
    matrix = pair_matrix(dots, ["ar", *TASKS])
    assert torch.isnan(matrix[0]).all() and matrix[1, 3] == pytest.approx(float(fig.dot[0, 2]))


def test_zero_gradient_leaves_its_cosines_undefined():
    gram = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.isnan(cosines(gram)[0, 1])
    stats = StepStats(
        step=0,
        slots=["a", "b"],
        tasks=["a", "b"],
        groups=[GroupStats("g", 2, gram, torch.tensor([True, False]), torch.tensor([1.0, 0.0]))],
    )
    fig = interference(stats)
    assert math.isnan(fig.cos_min) and math.isnan(fig.conflict_rate)
    assert "cos/a|b" not in step_scalars(fig) and "weight/b" not in step_scalars(fig)
    with pytest.raises(ValueError, match="no group"):
        interference(StepStats(step=0, slots=["a"], tasks=["a"]))


def test_first_order_affinity_matches_the_lookahead_for_a_small_step():
    # Two least-squares tasks on shared parameters: Z_{i->j} = 1 - L_j(theta - lr g_i) / L_j.
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(6, dtype=torch.float64, generator=g)
    data = [(torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(10, generator=g,
            dtype=torch.float64)) for _ in range(3)]  # fmt: skip

    def loss(j: int, p: torch.Tensor) -> torch.Tensor:
        X, y = data[j]
        return ((X @ p - y) ** 2).mean()

    grads = torch.stack([torch.func.grad(lambda p, j=j: loss(j, p))(theta) for j in range(3)])
    losses = torch.stack([loss(j, theta) for j in range(3)])
    lr = 1e-4
    approx = tag_affinity(grads @ grads.T, losses, lr)
    for i in range(3):
        for j in range(3):
            exact = 1 - loss(j, theta - lr * grads[i]) / losses[j]
            assert approx[i, j] == pytest.approx(float(exact), rel=1e-2, abs=1e-9)
    assert torch.isnan(tag_affinity(grads @ grads.T, torch.tensor([1.0, 0.0, 1.0]), lr)[0, 1])


@pytest.mark.parametrize(
    ("rows", "cols", "label", "title"),
    [(5, 15, "x" * 120, "cosine per group"), (1, 1, "a" * 30, "t" * 60), (40, 15, "y" * 70, "z")],
)
def test_heatmaps_leave_room_for_their_text(rows, cols, label, title):
    import io
    import warnings

    from lightning_bmoo.callbacks import wandb_panels

    labels = [f"{label}{r}" for r in range(rows)]
    columns = [f"{label[:20]}|{c}" for c in range(cols)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib: "constrained_layout not applied"
        fig = wandb_panels.heatmap(torch.randn(rows, cols), labels, title, columns=columns)
        fig.savefig(io.BytesIO(), format="png")
