"""Per-language heads get their language's update for every slot layout, under FSDP2.

A head used only in an earlier slot must receive the comm's update at the last slot (the DDP
hook once gave it zeros); a head's group leaves out languages whose rows are zero there.
With one unit (the root) the only reduce-scatter of a backward pass runs inside FSDP's
end-of-backward callback, where the comm must still find the step's end.
"""

from __future__ import annotations

import itertools

import torch
from torch.distributed.fsdp import fully_shard

from ..comm.heads import LANGUAGES, Heads, expected_grads, loss
from ..distributed import run_distributed
from .models import assembled, run_steps, sharded_heads

K = 2

# Every layout of 3 languages over W = 2 ranks x K = 2 slots (ru's head is never used), and
# every one with 4 distinct languages.
LAYOUTS = [list(t) for t in itertools.product(LANGUAGES[:3], repeat=4)] + [
    list(t) for t in itertools.permutations(LANGUAGES)
]
CONFIGS = [
    ("mean", "parameter", "units"),
    ("mgda", "parameter", "root"),
    ("mgda", "bucket", "units"),
    ("upgrad", "global", "root"),
]


def _root_only():
    return fully_shard(Heads())


def _every_layout(rank, world_size):
    out = {}
    for aggregator, granularity, units in CONFIGS:
        model = sharded_heads() if units == "units" else _root_only()
        run = run_steps(model, LAYOUTS, K, rank, aggregator, loss=loss, granularity=granularity)
        groups = [
            [
                (g.key, list(g.param_names))
                for g in ([s.global_group] if s.global_group else s.groups)
            ]
            for s in run["stats"]
        ]
        out[aggregator, granularity, units] = (run["grads"], groups)
    return out


def test_every_head_gets_its_update_for_every_slot_layout():
    results = run_distributed(_every_layout, 2)
    for config in CONFIGS:
        grads = assembled([rank[config][0] for rank in results])
        for _, groups in (results[0][config], results[1][config]):
            for step, (layout, got, solves) in enumerate(zip(LAYOUTS, grads, groups)):
                expected = expected_grads(layout, step, K, solves, config[0])
                for name, want in expected.items():
                    where = f"{config} layout {layout} {name}"
                    value = got[name].double().flatten()
                    if want is None:  # no slot used it: FSDP2 reduces zeros for it
                        assert not value.any(), where
                    else:
                        torch.testing.assert_close(value, want, rtol=1e-4, atol=1e-6, msg=where)
