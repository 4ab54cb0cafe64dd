"""Through the strategy, per-language heads get their language's update for every layout."""

from __future__ import annotations

import itertools

import torch

from lightning_bmoo.strategy import BucketMOOStrategy

from ..comm.heads import LANGUAGES, expected_grads
from ..reference import assert_grad_matches
from .helpers import fit
from .models import GradRecorder, HeadsModel, PlannedData

K = 2
# A third of the layouts of 3 languages over 2 ranks x 2 slots, and every one of 4 languages.
LAYOUTS = [list(t) for t in itertools.product(LANGUAGES[:3], repeat=4)][::3] + [
    list(t) for t in itertools.permutations(LANGUAGES)
]


def test_heads_used_in_early_slots_get_their_update(tmp_path):
    strategy = BucketMOOStrategy("mgda", start_method="fork", find_unused_parameters=True)
    fit(
        tmp_path,
        strategy,
        model=HeadsModel(),
        data=PlannedData(LAYOUTS, K),
        callbacks=[GradRecorder(str(tmp_path))],
        accumulate_grad_batches=K,
        max_steps=len(LAYOUTS),
    )
    for rank in range(2):
        steps = torch.load(tmp_path / f"grads{rank}.pt", weights_only=False)
        assert len(steps) == len(LAYOUTS)
        for step, (layout, (grads, groups)) in enumerate(zip(LAYOUTS, steps)):
            for name, want in expected_grads(layout, step, K, groups, "mgda").items():
                # Lightning divides the loss by K; the hook's update is in raw gradients.
                assert_grad_matches(grads[name], want, f"rank {rank} layout {layout} {name}")
