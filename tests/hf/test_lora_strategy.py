"""Per-language LoRA through BucketMOOStrategy and the example's LightningModule.

Every adapter a step used gets its language's update, whatever slot used it (against the
one-process reference); adapters no slot used keep ``.grad = None``; the frozen base is in no
group. The monitor shows what docs/huggingface.md says for groups that hold one language's
adapter only: no pair cosine, weight 1.
"""

from __future__ import annotations

import itertools
import math

import torch

from lightning_bmoo.callbacks import InterferenceMonitor
from lightning_bmoo.strategy import BucketMOOStrategy

from ..reference import assert_grad_matches
from ..strategy.helpers import fit
from ..strategy.models import PlannedData
from .lightning_parts import GradRecorder, TinyLM, token_batch
from .tiny import LANGUAGES, expected_grads, per_language_model

K = 2
# A fifth of the layouts of 3 languages over 2 ranks x 2 slots, and a third of the 4-language
# ones (tests/hf/test_lora_layouts.py runs all of them with plain torch DDP).
LAYOUTS = [list(t) for t in itertools.product(LANGUAGES[:3], repeat=4)][::5] + [
    list(t) for t in itertools.permutations(LANGUAGES)
][::3]


def test_per_language_adapters_through_the_strategy_and_the_monitor(tmp_path):
    strategy = BucketMOOStrategy(
        "mgda", granularity="parameter", start_method="fork", find_unused_parameters=True
    )
    fit(
        tmp_path,
        strategy,
        model=TinyLM(per_language_model(), per_language=True),
        data=PlannedData(LAYOUTS, K, token_batch),
        callbacks=[GradRecorder(str(tmp_path)), InterferenceMonitor(1, heatmaps=False)],
        accumulate_grad_batches=K,
        max_steps=len(LAYOUTS),
    )
    for rank in range(2):
        steps = torch.load(tmp_path / f"grads{rank}.pt", weights_only=False)
        assert len(steps) == len(LAYOUTS)
        for step, (layout, (grads, groups)) in enumerate(zip(LAYOUTS, steps)):
            assert {n for _, names in groups for n in names} == set(grads)
            want = expected_grads(per_language_model, layout, step, K, groups, "mgda")
            for name, expected in want.items():
                where = f"rank {rank} layout {layout} {name}"
                assert_grad_matches(grads[name], expected, where)
    # The last step holds 4 languages, each in its own adapter: no group holds two of them.
    metrics, group_cos = torch.load(tmp_path / "monitor0.pt", weights_only=False)
    for name in ("cos_min", "cos_mean", "conflict_rate", "conflict_rate_weighted"):
        assert f"interference/{name}" not in metrics  # undefined, so not logged
    for a, b in itertools.combinations(LANGUAGES, 2):
        assert metrics[f"interference/cos/{a}|{b}"] == 0.0  # no shared trained parameter
        assert metrics[f"interference/affinity/{a}|{b}"] == 0.0
    for lang in LANGUAGES:
        assert metrics[f"interference/weight/{lang}"] == 1.0  # its adapter gets all of its row
        assert metrics[f"interference/weight_std/{lang}"] == 0.0
        assert math.isfinite(metrics[f"interference/grad_norm/{lang}"])
        assert metrics[f"interference/gain/{lang}"] > 0
    off_diagonal = ~torch.eye(len(LANGUAGES), dtype=torch.bool)
    assert group_cos.shape[0] > 1 and torch.isnan(group_cos[:, off_diagonal]).all()


def test_per_language_adapters_with_checkpointing_bf16_and_tied_embeddings_train(tmp_path):
    model = per_language_model()  # tied input and output embeddings
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = BucketMOOStrategy("mgda", start_method="fork", find_unused_parameters=True)
    layouts = [["de", "en", "fr", "ru"], ["en", "de", "en", "fr"], ["ru", "fr", "de", "de"]]
    fit(
        tmp_path,
        strategy,
        model=TinyLM(model, per_language=True, lr=1e-2, gradient_checkpointing=True),
        data=PlannedData(layouts, K, token_batch),
        callbacks=[GradRecorder(str(tmp_path))],
        accumulate_grad_batches=K,
        precision="bf16-mixed",
        max_steps=len(layouts),
    )
    params = [torch.load(tmp_path / f"params{r}.pt", weights_only=False) for r in range(2)]
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], rtol=0, atol=0, msg=name)  # replicas
        assert torch.isfinite(value).all(), name
        moved = not torch.equal(value, before[name])
        assert moved == ("lora_" in name), name  # adapters trained, the frozen base did not
