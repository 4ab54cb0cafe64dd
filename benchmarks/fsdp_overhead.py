"""Step time, traffic and memory of the bucket-MOO FSDP comm against FSDP2's default, on gloo.

A causal transformer LM of about 50M parameters, sharded per block (the embedding and the
output layer are units of their own, the root holds the rest). Two phases, each in fresh
forked processes (one thread per rank, one language per rank and slot):

1. *Time and traffic*: for each comm setting, one process group builds the model twice (FSDP2's
   default and the setting) and trains them in turn, one step each per round, so that the
   ratio is robust to the drift of a busy machine. One group per setting, because six such
   models side by side in one process slowed the later ones (the comm's time grew with the
   setting's place in the list, 198 -> 643 ms). Printed per configuration: median
   step time (forward, backward, SGD step; ranks in lockstep) and its ratio to FSDP2's in the
   same group (FSDP2's own row: the median over the groups); time
   inside the comm; bytes each rank sent per step and their ratio to FSDP2's ring
   reduce-scatters of the same padded gradients (one per microbatch); the comm's own count
   of the buffers it held at once beyond FSDP's (``StepStats.peak_extra_bytes``) in MB and in
   units of the largest unit's unsharded gradient. Then gloo's reduce-scatter against an
   all-to-all of the largest unit, and the comm's arithmetic per step (Gramians and
   combinations of every unit's shard rows).
2. *Memory*: each configuration, and the DDP hook (mgda, sharded) on the same model, runs a
   few steps in processes of its own; printed is each rank's peak resident memory during
   those steps above what it held once the model was built (Linux's ``VmHWM`` after resetting
   it, minus ``VmRSS`` then; glibc's mmap threshold is pinned so that freed tensors leave the
   resident set), and the difference to FSDP2's default.

    python benchmarks/fsdp_overhead.py [--steps 10] [--slots 1] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from lm import TransformerLM, train_step
from ranks import run_ranks
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook, register_fsdp_bucket_moo_hook
from lightning_bmoo.comm.linalg import combine_rows, row_gramian

VOCAB, WIDTH, BLOCKS, HEADS, SEQ, BATCH = 8000, 640, 8, 10, 64, 4


def _model() -> TransformerLM:
    """About 49.7M parameters."""
    return TransformerLM(VOCAB, WIDTH, BLOCKS, HEADS, SEQ)


def _build(config: dict[str, Any], K: int) -> tuple[nn.Module, Any]:
    """The model wrapped as the configuration says, and the hook's state (or None)."""
    torch.manual_seed(0)
    model = _model()
    if config["wrap"] == "ddp":
        ddp = DDP(model)
        return ddp, register_bucket_moo_hook(ddp, config["aggregator"], slots_per_rank=K)
    for unit in (model.embed, *model.blocks, model.head):
        fully_shard(unit)
    fully_shard(model)
    if config["aggregator"] is None:
        return model, None
    state = register_fsdp_bucket_moo_hook(
        model, config["aggregator"], slots_per_rank=K, granularity=config["granularity"]
    )
    return model, state


def _tokens(K: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (K, BATCH, SEQ + 1), generator=g)


def _shard_numels(model: nn.Module) -> list[int]:
    """Per unit: the padded elements each rank reduce-scatters (FSDP's layout)."""
    out = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            for group in module._get_fsdp_state()._fsdp_param_groups:
                sizes = [fp.padded_sharded_param_size.numel() for fp in group.fsdp_params]
                out.append(sum(sizes))
    return out


def _timed(rank: int, W: int, configs: list[dict], steps: int, K: int, extras: bool) -> dict | None:
    """Step times and stats of ``configs`` side by side; with ``extras`` also gloo's
    collectives and the comm's arithmetic (once per run is enough: they do not depend on the
    setting)."""
    runs = []
    for config in configs:
        model, state = _build(config, K)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        runs.append((model, state, opt, torch.Generator().manual_seed(rank), []))
    warmup = 2
    stats: list[list[Any]] = [[] for _ in configs]
    for step in range(warmup + steps):
        for i, (model, state, opt, g, times) in enumerate(runs):
            dist.barrier()
            start = time.perf_counter()
            train_step(model, state, opt, _tokens(K, g), rank, step)
            times.append(time.perf_counter() - start)
            if state is not None and step >= warmup:
                stats[i].append(state.last_step)
    shards = _shard_numels(runs[0][0])
    collectives = _collective_times(W * max(shards)) if extras else {}
    results = []
    for (_, _, _, _, times), steps_stats in zip(runs, stats):
        results.append(
            {
                "step": statistics.median(times[warmup:]),
                "sent": statistics.median(sum(s.bytes_sent.values()) for s in steps_stats)
                if steps_stats
                else None,
                "hook": statistics.median(s.hook_seconds for s in steps_stats)
                if steps_stats
                else 0.0,
                "held": max(s.peak_extra_bytes for s in steps_stats) if steps_stats else 0,
            }
        )
    if rank != 0:
        return None
    return {
        "results": results,
        "shards": shards,
        "numel": sum(p.numel() for p in _model().parameters()),
        "collectives": collectives,
        "arithmetic": _arithmetic_times(shards, W * K) if extras else {},
    }


def _collective_times(numel: int) -> dict[str, float]:
    """Seconds of gloo's reduce-scatter and all-to-all of ``numel`` float32 (medians of 5)."""
    x = torch.randn(numel)
    scattered, exchanged = torch.empty(numel // dist.get_world_size()), torch.empty(numel)
    runs = {
        "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(scattered, x),
        "all_to_all_single": lambda: dist.all_to_all_single(exchanged, x),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(5):
        for name, run in runs.items():
            dist.barrier()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _arithmetic_times(shards: list[int], T: int) -> dict[str, float]:
    """Seconds per step of the comm's own arithmetic, in one process: every unit's Gramian
    of ``T`` shard rows and their weighted combination (medians of 3)."""
    gramians, combinations = [], []
    for _ in range(3):
        gram = comb = 0.0
        for m in shards:
            rows, out = torch.randn(T, m), torch.empty(m)
            start = time.perf_counter()
            row_gramian(rows)
            gram += time.perf_counter() - start
            start = time.perf_counter()
            combine_rows(rows, torch.full((T,), 1.0 / T, dtype=torch.float64), out)
            comb += time.perf_counter() - start
        gramians.append(gram)
        combinations.append(comb)
    return {"Gramians": statistics.median(gramians), "combination": statistics.median(combinations)}


def _memory(rank: int, world: int, configs: list[dict], steps: int, K: int) -> int:
    # A fixed mmap threshold (here only: it slows allocation, which the timed phase must not
    # suffer): large tensors are mmapped and leave the resident set when freed, so that the
    # peak follows the live tensors (glibc raises the threshold as tensors are freed).
    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    model, state = _build(configs[0], K)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    dist.barrier()
    # Forget the peak of building the unsharded model: measure from here on.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    for step in range(steps):
        train_step(model, state, opt, _tokens(K, g), rank, step)
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (kB there)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def configurations(quick: bool) -> list[dict]:
    """FSDP2's default first, then the comm's settings."""
    settings = [("mgda", "bucket"), ("mean", "bucket")]
    if not quick:
        settings += [("pcgrad", "bucket"), ("mgda", "parameter"), ("mgda", "global")]
    plain = {"wrap": "fsdp", "aggregator": None, "granularity": "-"}
    return [plain] + [{"wrap": "fsdp", "aggregator": a, "granularity": g} for a, g in settings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1, help="K: microbatches per rank")
    parser.add_argument("--quick", action="store_true", help="default, mgda and mean only")
    args = parser.parse_args()
    W, K = args.world_size, args.slots
    configs = configurations(args.quick)
    groups = [
        run_ranks(_timed, W, [configs[0], c], args.steps, K, i == 0)[0]
        for i, c in enumerate(configs[1:])
    ]
    timed = groups[0]
    default = statistics.median(g["results"][0]["step"] for g in groups)
    results = [dict(groups[0]["results"][0], step=default, ratio=1.0)] + [
        dict(g["results"][1], ratio=g["results"][1]["step"] / g["results"][0]["step"])
        for g in groups
    ]
    memory = [
        max(run_ranks(_memory, W, [config], args.memory_steps, K))
        for config in [*configs, {"wrap": "ddp", "aggregator": "mgda", "granularity": "bucket"}]
    ]
    shards = timed["shards"]
    # FSDP2 reduce-scatters every microbatch: K reduce-scatters per step.
    reduce_scatter = K * (W - 1) * sum(shards) * 4
    unit_grad = W * max(shards) * 4
    print(
        f"{W} gloo ranks x 1 thread, K = {K}, {timed['numel'] / 1e6:.1f}M parameters in "
        f"{len(shards)} units (largest unsharded gradient {unit_grad / 2**20:.1f} MB), median "
        f"of {args.steps} interleaved steps, each setting beside FSDP2's default in its own "
        "processes\n"
    )
    print(
        "| update | granularity | step ms | x FSDP2 | hook ms | MB sent "
        "| x FSDP2's reduce-scatters | held MB | held / unit grad |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config, r in zip(configs, results):
        name = config["aggregator"] or "FSDP2 default"
        sent = reduce_scatter if r["sent"] is None else r["sent"]
        print(
            f"| {name} | {config['granularity']} | {r['step'] * 1e3:.0f} | {r['ratio']:.3f} "
            f"| {r['hook'] * 1e3:.1f} | {sent / 2**20:.1f} | {sent / reduce_scatter:.4f} "
            f"| {r['held'] / 2**20:.1f} | {r['held'] / unit_grad:.2f} |"
        )
    c, a = timed["collectives"], timed["arithmetic"]
    print(
        f"\ngloo here, the largest unit's {unit_grad / 2**20:.1f} MB: reduce_scatter_tensor "
        f"{c['reduce_scatter_tensor'] * 1e3:.1f} ms, all_to_all_single "
        f"{c['all_to_all_single'] * 1e3:.1f} ms. The comm's arithmetic per step (every unit, "
        f"T = {W * K} rows, one process): Gramians {a['Gramians'] * 1e3:.0f} ms, combinations "
        f"{a['combination'] * 1e3:.0f} ms."
    )
    print(
        f"\nPeak resident memory per rank above the built model, {args.memory_steps} steps "
        "each in fresh processes:\n"
    )
    print("| run | granularity | peak MB | vs FSDP2 default MB | vs one unit's gradient |")
    print("|---|---|---|---|---|")
    names = [c["aggregator"] or "FSDP2 default" for c in configs] + ["DDP hook, mgda"]
    grans = [c["granularity"] for c in configs] + ["bucket (25 MB)"]
    for name, gran, peak in zip(names, grans, memory):
        extra = peak - memory[0]
        print(
            f"| {name} | {gran} | {peak / 2**20:.0f} | {extra / 2**20:+.0f} "
            f"| {extra / unit_grad:+.2f} |"
        )


if __name__ == "__main__":
    main()
