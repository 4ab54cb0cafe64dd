"""Step time, traffic and memory of the bucket-MOO hook against plain DDP, on gloo ranks.

Each configuration runs in a fresh group of forked processes (one thread each) that train
the same small transformer language model on random tokens, one language per rank
(K = 1 slot, the hook's no-extra-copy path) unless ``--slots`` says otherwise. Plain DDP
runs first and last at each bucket size, so drift on a busy machine shows up in the
table. Printed per configuration:

* median step time (forward + backward + SGD step, ranks in lockstep) and its ratio to
  plain DDP with the same bucket size;
* bytes each rank sent per step, and their ratio to a ring all-reduce of the gradients;
* extra memory per rank: the most bytes of gradient-sized buffers the hook held at once
  (its own count, exact), in MB and in buckets; and, as a cross-check, the growth of the
  peak resident set over training minus plain DDP's (allocator effects included).

    python benchmarks/hook_overhead.py [--steps 12] [--bucket-mb 5 25] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import tempfile
import time

import torch
import torch._dynamo  # DDP imports it lazily: import it once, before forking
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

VOCAB, WIDTH, LAYERS, HEADS, SEQ, BATCH = 8000, 384, 6, 6, 64, 8
LANGUAGES = ("de", "en", "fr", "ru")


class TinyLM(nn.Module):
    """A pre-norm causal transformer LM of about 14M parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(torch.zeros(SEQ, WIDTH))
        layer = nn.TransformerEncoderLayer(
            WIDTH, HEADS, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        return self.head(self.norm(self.blocks(x, mask=self.mask, is_causal=True)))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(rank: int, world: int, port: int, config: dict, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyLM()
    ddp = DDP(model, bucket_cap_mb=config["bucket_mb"], broadcast_buffers=False)
    K = config.get("slots", 1)
    state = None
    if config["aggregator"] is not None:
        state = register_bucket_moo_hook(
            ddp,
            config["aggregator"],
            slots_per_rank=K,
            transport=config["transport"],
            granularity=config["granularity"],
        )
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    warmup = 3
    base_rss = _rss_mb()
    times, sent, hook, held = [], [], [], []
    for step in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        for k in range(K):
            tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
            logits = ddp(tokens[:, :-1])
            loss = (
                nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
                / K
            )
            if state is None:
                loss.backward()
            else:
                with state.slot(LANGUAGES[(step + rank * K + k) % len(LANGUAGES)]):
                    loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - start)
        if state is not None and state.last_step is not None:
            sent.append(sum(state.last_step.bytes_sent.values()))
            hook.append(state.last_step.hook_seconds)
            held.append(state.last_step.peak_extra_bytes)
        if step == warmup - 1:
            warm_rss = _rss_mb()
    numel = sum(p.numel() for p in model.parameters())
    result = {
        "step": statistics.median(times[warmup:]),
        "sent": statistics.median(sent[warmup:]) if sent else 2 * (world - 1) / world * numel * 4,
        "hook": statistics.median(hook[warmup:]) if hook else 0.0,
        "held_mb": max(held) / 2**20 if held else 0.0,
        "growth_mb": _rss_mb() - base_rss,
        "warm_growth_mb": warm_rss - base_rss,
        "numel": numel,
    }
    if rank == 0:
        torch.save(result, out)
    del ddp
    dist.barrier()
    dist.destroy_process_group()


def run_config(config: dict, steps: int, world: int) -> dict:
    """Runs one configuration in fresh processes and returns rank 0's measurements."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        mp.start_processes(
            _run, args=(world, port, config, steps, out), nprocs=world, start_method="fork"
        )
        return torch.load(out)


def configurations(bucket_sizes: list[float], quick: bool) -> list[dict]:
    configs = []
    for mb in bucket_sizes:
        plain = {"aggregator": None, "transport": "-", "granularity": "-", "bucket_mb": mb}
        configs.append(plain)
        moo = [("mgda", "sharded", "bucket"), ("mgda", "gather", "bucket")]
        if not quick:
            moo += [
                ("mean", "sharded", "bucket"),
                ("pcgrad", "sharded", "bucket"),
                ("mgda", "sharded", "parameter"),
                ("mgda", "sharded", "global"),
            ]
        for aggregator, transport, granularity in moo:
            configs.append(
                {
                    "aggregator": aggregator,
                    "transport": transport,
                    "granularity": granularity,
                    "bucket_mb": mb,
                }
            )
        configs.append(dict(plain, again=True))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[5.0, 25.0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1, help="K: microbatches per rank")
    parser.add_argument("--quick", action="store_true", help="plain, mgda sharded/gather only")
    args = parser.parse_args()
    rows, plain = [], {}
    for config in configurations(args.bucket_mb, args.quick):
        config["slots"] = args.slots
        r = run_config(config, args.steps, args.world_size)
        mb = config["bucket_mb"]
        if config["aggregator"] is None:
            # The baseline is the faster of the two plain runs around the MOO runs.
            plain[mb] = r if mb not in plain else min(plain[mb], r, key=lambda x: x["step"])
            if not config.get("again"):
                plain[mb]["first"] = r
        rows.append((config, r))
    all_reduce = {
        mb: 2 * (args.world_size - 1) / args.world_size * p["numel"] * 4 for mb, p in plain.items()
    }
    print(
        f"{args.world_size} gloo ranks x 1 thread, K = {args.slots}, "
        f"{rows[0][1]['numel'] / 1e6:.1f}M parameters, {args.steps} timed steps each\n"
    )
    print(
        "| bucket MB | update | transport | granularity | step ms | x plain | hook ms "
        "| MB sent | x all-reduce | held MB | held buckets | RSS extra MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for config, r in rows:
        mb = config["bucket_mb"]
        base = plain[mb]
        extra = r["growth_mb"] - base["growth_mb"]
        name = config["aggregator"] or ("plain DDP" + (" (again)" if config.get("again") else ""))
        print(
            f"| {mb:g} | {name} | {config['transport']} | {config['granularity']} "
            f"| {r['step'] * 1e3:.0f} | {r['step'] / base['step']:.3f} "
            f"| {r['hook'] * 1e3:.1f} | {r['sent'] / 1e6:.1f} "
            f"| {r['sent'] / all_reduce[mb]:.3f} | {r['held_mb']:.1f} "
            f"| {r['held_mb'] / mb:.2f} | {extra:.0f} |"
        )


if __name__ == "__main__":
    main()
