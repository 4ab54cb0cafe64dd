"""Per-language heads (or adapters) get their language's update for every slot layout.

DDP writes a bucket's result into ``.grad`` only for parameters some rank used in the backward
pass that produced it. With several slots per rank, a head used only in an earlier slot must
still receive the hook's update, not the zeros handed back for that slot.
"""

from __future__ import annotations

import itertools

from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

from ..distributed import run_distributed
from ..reference import assert_grad_matches
from .heads import LANGUAGES, Heads, expected_grads, loss

K = 2

# Every layout of 3 languages over W = 2 ranks x K = 2 slots (ru's head is never used), and
# every one with 4 distinct languages.
LAYOUTS = [list(t) for t in itertools.product(LANGUAGES[:3], repeat=4)] + [
    list(t) for t in itertools.permutations(LANGUAGES)
]


def _every_layout(rank, world_size, configs):
    out = {}
    for aggregator, granularity, transport in configs:
        model = Heads()
        ddp = DDP(model, find_unused_parameters=True)
        state = register_bucket_moo_hook(
            ddp, aggregator, slots_per_rank=K, granularity=granularity, transport=transport
        )
        steps = []
        for step, layout in enumerate(LAYOUTS):
            for k in range(K):
                language = layout[rank * K + k]
                with state.slot(language):
                    (loss(ddp, language, step, k) / K).backward()
            grads = {
                n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
            }
            groups = [(g.key, list(g.param_names)) for g in state.last_step.groups]
            steps.append((grads, groups))
            ddp.zero_grad(set_to_none=True)  # no optimizer: the weights stay as initialised
        out[aggregator, granularity, transport] = steps
        del ddp
    return out


# Each aggregator, granularity and transport twice (the transports find idle heads differently).
CONFIGS = [
    ("mean", "parameter", "sharded"),
    ("mgda", "parameter", "gather"),
    ("mgda", "bucket", "sharded"),
    ("mean", "bucket", "gather"),
]


def test_every_head_gets_its_update_for_every_slot_layout():
    results = run_distributed(_every_layout, 2, CONFIGS)
    for config in CONFIGS:
        for rank_steps in (results[0][config], results[1][config]):
            for step, (layout, (grads, groups)) in enumerate(zip(LAYOUTS, rank_steps)):
                expected = expected_grads(layout, step, K, groups, config[0])
                for name, want in expected.items():
                    # A head no slot used stays untouched (None).
                    assert_grad_matches(grads[name], want, f"{config} layout {layout} {name}")
