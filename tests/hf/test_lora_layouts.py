"""Per-language LoRA adapters get their language's update for every slot layout (W = 2, K = 2).

The frozen base has no gradient and is in no group of the hook; an adapter no slot used keeps
``.grad = None``; every other adapter gets what a one-process reference computes, whatever slot
(early or last) used it. Plain torch DDP here; through the Lightning strategy in
test_lora_strategy.py.
"""

from __future__ import annotations

import itertools

from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

from ..distributed import run_distributed
from ..reference import assert_grad_matches
from .tiny import LANGUAGES, expected_grads, lm_loss, per_language_model, trainable_grads

K = 2
# Every layout of 3 languages over 2 ranks x 2 slots (ru's adapter is never used), and every
# one with 4 distinct languages.
LAYOUTS = [list(t) for t in itertools.product(LANGUAGES[:3], repeat=4)] + [
    list(t) for t in itertools.permutations(LANGUAGES)
]
# Each aggregator, granularity and transport once (tests/comm covers their combinations).
CONFIGS = [("mgda", "bucket", "sharded"), ("mean", "parameter", "gather")]


def _every_layout(rank, world_size, configs, layouts):
    out = {}
    for aggregator, granularity, transport in configs:
        model = per_language_model()
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # A small bucket cap spreads the adapters over several buckets.
        ddp = DDP(model, find_unused_parameters=True, bucket_cap_mb=0.01)
        state = register_bucket_moo_hook(
            ddp, aggregator, slots_per_rank=K, granularity=granularity, transport=transport
        )
        steps = []
        for step, layout in enumerate(layouts):
            for k in range(K):
                language = layout[rank * K + k]
                with state.slot(language):
                    (lm_loss(ddp, language, step, k) / K).backward()
            assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
            groups = [(g.key, list(g.param_names)) for g in state.last_step.groups]
            steps.append((trainable_grads(model), groups))
            ddp.zero_grad(set_to_none=True)  # no optimizer: the weights stay as initialised
        frozen_grads = [
            n for n, p in model.named_parameters() if n in frozen and p.grad is not None
        ]
        out[aggregator, granularity, transport] = (steps, frozen, frozen_grads)
        del ddp
    return out


def test_every_language_adapter_gets_its_update_for_every_slot_layout():
    results = run_distributed(_every_layout, 2, CONFIGS, LAYOUTS)
    for config in CONFIGS:
        for rank in range(2):
            steps, frozen, frozen_grads = results[rank][config]
            assert frozen and not frozen_grads  # the base is frozen and never gets a gradient
            for step, (layout, (grads, groups)) in enumerate(zip(LAYOUTS, steps)):
                in_groups = {n for _, names in groups for n in names}
                assert in_groups == set(grads)  # the hook sees the adapters, not the base
                assert all("lora_" in n for n in in_groups)
                expected = expected_grads(per_language_model, layout, step, K, groups, config[0])
                unused = {lang for lang in LANGUAGES if lang not in layout}
                for name, want in expected.items():
                    got = grads[name]
                    where = f"{config} rank {rank} layout {layout} {name}"
                    assert_grad_matches(got, want, where)
                    if want is None:  # an adapter no slot used stays untouched
                        assert any(f".{lang}." in name for lang in unused), where
