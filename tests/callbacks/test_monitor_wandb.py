"""A two-rank fit logging to offline W&B: the logged figures equal explicit-gradient figures."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_bmoo.callbacks import InterferenceMonitor
from lightning_bmoo.report import find_offline_runs, wait_for_run
from lightning_bmoo.strategy import BucketMOOStrategy

from .fits import ValModel, fit, flat, task_gradients

P = "interference/"


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield
    import wandb

    wandb.finish()


def test_wandb_run_holds_the_explicit_gradient_figures(tmp_path, wandb_env):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="monitor")
    ranks = fit(
        tmp_path,
        InterferenceMonitor(log_every_n_steps=1, lookahead_every=2),
        logger=logger,
        model=ValModel(lr=0.01),
        limit_val_batches=2,
        val_check_interval=4,
        # One group per parameter tensor: six groups for the per-group figures.
        strategy=BucketMOOStrategy("mgda", granularity="parameter", start_method="fork"),
    )
    (run_dir,) = find_offline_runs(tmp_path)
    run = wait_for_run(run_dir)  # wandb.finish() can return while its writer still flushes
    rows = {
        int(r["trainer/global_step"]): r for r in run.history if f"{P}cos_min" in r
    }  # one row of scalars per step
    assert sorted(rows) == [1, 2, 3, 4]
    for index in range(4):
        step = ranks[0]["steps"][index]
        stats = step["stats"]
        # Every rank recorded the same statistics (the Gramian is reduced in the hook).
        other = ranks[1]["steps"][index]["stats"]
        assert stats.tasks == other.tasks
        assert torch.equal(stats.total_gramian(), other.total_gramian())
        grads, losses = task_gradients(index, ranks)
        assert sorted(grads) == stats.tasks
        row = rows[step["global_step"]]
        vectors = {lang: flat(g) for lang, g in grads.items()}
        # The hook's Gramian is the Gramian of the explicit gradients.
        G = torch.stack([vectors[t] for t in stats.tasks])
        torch.testing.assert_close(stats.total_gramian(), G @ G.T, rtol=1e-5, atol=1e-9)
        a, b = stats.tasks
        assert row[f"{P}cos/{a}|{b}"] == pytest.approx(_cos(vectors[a], vectors[b]), rel=1e-5)
        for lang in stats.tasks:
            assert row[f"{P}loss/{lang}"] == pytest.approx(losses[lang], rel=1e-5)
            norm = float(vectors[lang].norm())
            assert row[f"{P}grad_norm/{lang}"] == pytest.approx(norm, rel=1e-5)
        lr = step["lr"]
        dot = float(vectors[a] @ vectors[b])
        assert row[f"{P}affinity/{a}|{b}"] == pytest.approx(lr * dot / losses[b], rel=1e-5)
        assert row[f"{P}affinity/{b}|{a}"] == pytest.approx(lr * dot / losses[a], rel=1e-5)
        # Per-group cosines, from the explicit gradients of each group's parameters.
        cosines = [
            _cos(flat(grads[a], g.param_names), flat(grads[b], g.param_names)) for g in stats.groups
        ]
        assert len(stats.groups) == 6
        assert row[f"{P}cos_min"] == pytest.approx(min(cosines), rel=1e-4, abs=1e-6)
        assert row[f"{P}conflict_rate"] == pytest.approx(sum(c < 0 for c in cosines) / len(cosines))
        if (index + 1) % 2 == 0:  # the exact lookahead ran; at lr 0.01 it is near first order
            exact = row[f"{P}affinity_exact/{a}|{b}"]
            assert exact == pytest.approx(row[f"{P}affinity/{a}|{b}"], rel=0.1, abs=1e-4)
        else:
            assert f"{P}affinity_exact/{a}|{b}" not in row
    for key in ("comm/bytes_sent", "comm/hook_ms", "comm/peak_extra_mb", "update_ratio",
                "conflict_rate_weighted", "cos_mean"):  # fmt: skip
        assert all(math.isfinite(r[P + key]) for r in rows.values())
    assert any(k.startswith(f"{P}gain/") for k in rows[1])
    assert any(k.startswith(f"{P}weight_std/") for k in rows[1])
    # Validation on "en" batches: per-language loss and perplexity.
    val = [r for r in run.history if f"{P}val_loss/en" in r]
    assert len(val) == 1 and val[0][f"{P}val_ppl/en"] == pytest.approx(
        math.exp(val[0][f"{P}val_loss/en"])
    )
    # Media: heatmaps and tables at every logging step, from rank 0 only.
    assert len(run.media(f"{P}cos_heatmap")) == 4
    assert all(p.suffix == ".png" and p.is_file() for p in run.media(f"{P}affinity_heatmap"))
    assert run.media(f"{P}group_cos_heatmap")
    table = run.table(f"{P}conflicts")
    assert table["columns"][:4] == ["step", "group", "parameters", "pair"]
    worst = run.table(f"{P}worst_group")["data"]
    assert len(worst) == 1 and worst[0][4] == pytest.approx(rows[4][f"{P}cos_min"], rel=1e-4)
    assert ranks[0]["media_logged"] == 4 and ranks[1]["media_logged"] == 0
    assert run.metrics[f"{P}*"]["step_metric"] == "trainer/global_step"
    assert run.metrics[f"{P}cos_min"]["summary"] == ["min", "last"]
