"""Step time, traffic and memory of the bucket-MOO hook against plain DDP, on gloo ranks.

For each bucket size, one group of forked processes (one thread each) builds the same
small transformer language model once per configuration (plain DDP and each hook setting)
and trains them in turn, one step each per round, on random tokens with one language per
rank (K = 1 slot, the hook's no-extra-copy path, unless ``--slots`` says otherwise).
Interleaving the configurations step by step makes the ratios robust to the drift of a
busy machine. Printed per configuration:

* median step time (forward + backward + SGD step, ranks in lockstep) and its ratio to
  plain DDP at the same bucket size, and the time spent inside the hook;
* bytes each rank sent per step, and their ratio to a ring all-reduce of the gradients;
* extra memory per rank: the most bytes of gradient-sized buffers the hook held at once
  beyond DDP's own buckets (its own exact count, after DDP's first-iteration bucket), in MB
  and in buckets.

    python benchmarks/hook_overhead.py [--steps 12] [--bucket-mb 5 25] [--quick] [--repeats 1]

With ``--repeats R`` each bucket size's group runs R times in fresh processes; the table then
shows the median of the R runs per column and, for the ratio to plain DDP, its range: single
runs of the ratio scatter by about +-0.02 on the 2-core box.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from lm import LANGUAGES, TransformerLM, train_step
from ranks import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

VOCAB, WIDTH, LAYERS, HEADS, SEQ, BATCH = 8000, 384, 6, 6, 64, 8


def languages(T: int) -> tuple[str, ...]:
    """``T`` language names: the four real ones, then made-up tags."""
    return LANGUAGES[:T] if len(LANGUAGES) >= T else tuple(f"x{i:02d}" for i in range(T))


def _run(rank: int, world: int, configs: list[dict], steps: int, warmup: int) -> list[dict]:
    runs = []
    for config in configs:
        torch.manual_seed(0)
        model = TransformerLM(VOCAB, WIDTH, LAYERS, HEADS, SEQ)  # about 16.8M parameters
        ddp = DDP(model, bucket_cap_mb=config["bucket_mb"], forward_sync_buffers=False)
        state = None
        if config["aggregator"] is not None:
            state = register_bucket_moo_hook(
                ddp,
                config["aggregator"],
                slots_per_rank=config["slots"],
                transport=config["transport"],
                granularity=config["granularity"],
            )
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        runs.append(
            {
                "ddp": ddp,
                "state": state,
                "opt": opt,
                "times": [],
                "sent": [],
                "hook": [],
                "held": [],
                "phases": [],
                "g": torch.Generator().manual_seed(rank),
            }
        )
    for step in range(warmup + steps):
        for config, run in zip(configs, runs):
            dist.barrier()
            start = time.perf_counter()
            tokens = torch.randint(0, VOCAB, (config["slots"], BATCH, SEQ + 1), generator=run["g"])
            names = languages(config.get("languages", len(LANGUAGES)))
            train_step(run["ddp"], run["state"], run["opt"], tokens, rank, step, names)
            run["times"].append(time.perf_counter() - start)
            last = run["state"].last_step if run["state"] is not None else None
            if last is not None and step >= 1:  # DDP's first iteration has one huge bucket
                run["sent"].append(sum(last.bytes_sent.values()))
                run["hook"].append(last.hook_seconds)
                run["held"].append(last.peak_extra_bytes)
                run["phases"].append(last.seconds)
    numel = sum(p.numel() for p in runs[0]["ddp"].module.parameters())
    results = [
        {
            "step": statistics.median(run["times"][warmup:]),
            "sent": statistics.median(run["sent"])
            if run["sent"]
            else 2 * (world - 1) / world * numel * 4,
            "hook": statistics.median(run["hook"][warmup - 1 :]) if run["hook"] else 0.0,
            "held_mb": max(run["held"]) / 2**20 if run["held"] else 0.0,
            # Median per phase (after warm-up): the phases then add up to about "hook".
            "phases": {
                phase: statistics.median(p[phase] for p in run["phases"][warmup - 1 :])
                for phase in (run["phases"][0] if run["phases"] else {})
            },
            "groups": len(run["state"].last_step.groups) if run["state"] is not None else 0,
            "numel": numel,
        }
        for run in runs
    ]
    runs.clear()
    return results


def run_configs(configs: list[dict], steps: int, world: int, warmup: int = 3) -> list[dict]:
    """Runs configurations side by side in fresh processes; returns rank 0's measurements.

    Each configuration is a dict with ``bucket_mb``, ``slots`` (K), ``aggregator`` (``None``
    for plain DDP), ``transport``, ``granularity`` and optionally ``languages`` (T).
    """
    return run_ranks(_run, world, configs, steps, warmup)[0]


def run_repeated(
    configs: list[dict], steps: int, world: int, repeats: int, warmup: int = 3
) -> list[tuple[list[dict], list[float]]]:
    """Runs the configurations side by side ``repeats`` times, each time in fresh processes.

    Returns per configuration its measurements (one per repeat, as :func:`run_configs`) and
    their ratios to the first configuration (plain DDP) of the same processes.
    """
    runs = [run_configs(configs, steps, world, warmup) for _ in range(repeats)]
    return [
        ([run[i] for run in runs], [run[i]["step"] / run[0]["step"] for run in runs])
        for i in range(len(configs))
    ]


def configurations(bucket_mb: float, quick: bool, slots: int) -> list[dict]:
    """Plain DDP first, then the hook settings, all at one bucket size."""
    moo = [("mgda", "sharded", "bucket"), ("mgda", "gather", "bucket")]
    if not quick:
        moo += [
            ("mean", "sharded", "bucket"),
            ("pcgrad", "sharded", "bucket"),
            ("mgda", "sharded", "parameter"),
            ("mgda", "sharded", "global"),
        ]
    base = {"bucket_mb": bucket_mb, "slots": slots}
    plain = dict(base, aggregator=None, transport="-", granularity="-")
    return [plain] + [dict(base, aggregator=a, transport=t, granularity=g) for a, t, g in moo]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[5.0, 25.0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1, help="K: microbatches per rank")
    parser.add_argument("--quick", action="store_true", help="plain, mgda sharded/gather only")
    parser.add_argument("--repeats", type=int, default=1, help="runs per bucket size")
    args = parser.parse_args()
    rows = []
    for mb in args.bucket_mb:
        configs = configurations(mb, args.quick, args.slots)
        measured = run_repeated(configs, args.steps, args.world_size, args.repeats)
        rows += [(config, *m) for config, m in zip(configs, measured)]
    numel = rows[0][1][0]["numel"]
    all_reduce = 2 * (args.world_size - 1) / args.world_size * numel * 4
    print(
        f"{args.world_size} gloo ranks x 1 thread, K = {args.slots}, "
        f"{numel / 1e6:.1f}M parameters, median of {args.steps} interleaved steps, "
        f"{args.repeats} run(s) per bucket size (medians; the ratio's range in brackets)\n"
    )
    print(
        "| bucket MB | update | transport | granularity | step ms | x plain | hook ms "
        "| MB sent | x all-reduce | held MB | held buckets |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config, results, ratios in rows:
        mb = config["bucket_mb"]
        name = config["aggregator"] or "plain DDP"
        m = {
            k: statistics.median(r[k] for r in results) for k in ("step", "hook", "sent", "held_mb")
        }
        spread = f" [{min(ratios):.3f}-{max(ratios):.3f}]" if len(ratios) > 1 else ""
        print(
            f"| {mb:g} | {name} | {config['transport']} | {config['granularity']} "
            f"| {m['step'] * 1e3:.0f} | {statistics.median(ratios):.3f}{spread} "
            f"| {m['hook'] * 1e3:.1f} | {m['sent'] / 1e6:.1f} "
            f"| {m['sent'] / all_reduce:.3f} | {m['held_mb']:.1f} | {m['held_mb'] / mb:.2f} |"
        )


if __name__ == "__main__":
    main()
