"""The bucket-MOO hook's fixed cost per bucket, on gloo ranks: what small buckets pay.

A stack of ``--buckets`` near-identity 64 x 64 linear layers, one per DDP bucket, so that
every bucket's arithmetic is negligible and what is left is what each bucket costs whatever
its size: launches, waits, Python, and the scheduling of gloo's threads. Plain DDP and the
hook (MGDA, sharded transport, bucket granularity, T = W languages, K = 1) train side by
side in the same processes, interleaved step by step. Printed per setting, per bucket and
from rank 0's main thread during backward (medians over steps): its CPU time, split by the
hook's phases (``StepStats.seconds``, timed here in the thread's CPU time), its wall time,
and how often the kernel switched it out: voluntarily (it waited) or not (preempted, mostly
by gloo's threads, which each launch wakes).

    python benchmarks/hook_fixed_cost.py [--buckets 120] [--steps 30] [--world-size 2]

``--world-size 1`` runs the hook with no collectives at all: its Python and torch ops alone.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import types

import torch
import torch.distributed as dist
from ranks import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

import lightning_bmoo.comm.stats as hook_stats
from lightning_bmoo.comm import register_bucket_moo_hook
from lightning_bmoo.comm.stats import PHASES

WIDTH, BATCH, WARMUP = 64, 8, 3


def _model(layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)])
    with torch.no_grad():  # near the identity, so that gradients neither vanish nor explode
        for layer in model:
            layer.weight.copy_(torch.eye(WIDTH) + 0.05 * torch.randn(WIDTH, WIDTH) / WIDTH**0.5)
    return model


def _run(rank: int, world: int, layers: int, steps: int) -> dict:
    # The hook's phase clock in this thread's CPU time instead of wall time.
    hook_stats.time = types.SimpleNamespace(perf_counter=time.thread_time)
    cap_mb = WIDTH * WIDTH * 4 / 2**20 * 0.99  # one layer per bucket
    settings = {}
    for name in ("plain DDP", "mgda sharded"):
        ddp = DDP(_model(layers), bucket_cap_mb=cap_mb, forward_sync_buffers=False)
        state = None if name == "plain DDP" else register_bucket_moo_hook(ddp, "mgda")
        settings[name] = (ddp, state, [])
    x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(rank + 1))
    for step in range(WARMUP + steps):
        for ddp, state, samples in settings.values():
            dist.barrier()
            loss = ddp(x).square().mean()
            before = resource.getrusage(resource.RUSAGE_THREAD)
            cpu, wall = time.thread_time(), time.perf_counter()
            if state is None:
                loss.backward()
            else:
                with state.slot(f"l{rank}"):
                    loss.backward()
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            after = resource.getrusage(resource.RUSAGE_THREAD)
            if step >= WARMUP:
                phases = state.last_step.seconds if state is not None else {}
                samples.append(
                    {
                        "cpu": cpu,
                        "wall": wall,
                        "voluntary": after.ru_nvcsw - before.ru_nvcsw,
                        "preempted": after.ru_nivcsw - before.ru_nivcsw,
                        **{phase: phases.get(phase, 0.0) for phase in PHASES},
                    }
                )
            ddp.zero_grad(set_to_none=True)
    state = settings["mgda sharded"][1]
    buckets = len(state.last_step.groups)
    return {
        "buckets": buckets,
        "settings": {
            name: {key: statistics.median(s[key] for s in samples) for key in samples[0]}
            for name, (_, _, samples) in settings.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=120)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    result = run_ranks(_run, args.world_size, args.buckets, args.steps)[0]
    n, settings = result["buckets"], result["settings"]
    plain = settings["plain DDP"]
    print(
        f"{args.world_size} gloo rank(s) x 1 thread, {n} buckets of {WIDTH * WIDTH} parameters, "
        f"rank 0's main thread during backward, per bucket (median of {args.steps} steps)\n"
    )
    print(
        "| setting | CPU us | extra CPU us | wall us | switched out (waits) | preempted | "
        + " | ".join(PHASES)
        + " |"
    )
    print("|---" * (6 + len(PHASES)) + "|")
    for name, s in settings.items():
        phases = " | ".join(f"{s[p] / n * 1e6:.0f}" if name != "plain DDP" else "-" for p in PHASES)
        print(
            f"| {name} | {s['cpu'] / n * 1e6:.0f} | {(s['cpu'] - plain['cpu']) / n * 1e6:.0f} "
            f"| {s['wall'] / n * 1e6:.0f} | {s['voluntary'] / n:.2f} | {s['preempted'] / n:.2f} "
            f"| {phases} |"
        )


if __name__ == "__main__":
    main()
