"""Bucket-level MOO on two gloo ranks with plain torch DDP: a small, honest demo.

Four synthetic "languages" share a small network; each maps the same inputs to targets
with its own matrix, and two of them are near-opposites, so their gradients conflict.
The script trains the same model with the plain DDP all-reduce and with the bucket-MOO
hook under several aggregators, then prints every language's final training loss, the
worst one, the mean gradient cosine between languages the hook measured, and the bytes
each rank sent per step.

    python examples/ddp_hook_demo.py [--steps 300] [--aggregators mean mgda pcgrad upgrad]

The multilingual fine-tuning example on real text comes with the Lightning strategy.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import zlib

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

LANGUAGES = ("de", "en", "fr", "ru")
WORLD_SIZE, SLOTS_PER_RANK = 2, 2  # 4 slots per step: one per language


def language_mapping(language: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(language.encode()))
    mapping = torch.randn(16, 4, generator=g)
    # ru pulls against en: their targets are nearly opposite.
    return -language_mapping("en") + 0.3 * mapping if language == "ru" else mapping


def batch(language: str, step: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(zlib.crc32(f"{language}/{step}/{slot}".encode()))
    x = torch.randn(32, 16, generator=g)
    return x, x @ language_mapping(language)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
    )


def train(rank: int, aggregator: str | None, steps: int) -> dict:
    ddp = DDP(make_model(), bucket_cap_mb=0.01)
    state = None
    if aggregator is not None:
        state = register_bucket_moo_hook(ddp, aggregator, slots_per_rank=SLOTS_PER_RANK)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    cosines, sent = [], []
    for step in range(steps):
        for k in range(SLOTS_PER_RANK):
            # Rotate languages over slots so that every rank sees every language.
            language = LANGUAGES[(step + rank * SLOTS_PER_RANK + k) % len(LANGUAGES)]
            x, y = batch(language, step, k)
            loss = ((ddp(x) - y) ** 2).mean() / SLOTS_PER_RANK
            if state is None:
                loss.backward()
            else:
                with state.slot(language):
                    loss.backward()
        opt.step()
        opt.zero_grad()
        if state is not None and state.last_step is not None:
            K = state.last_step.total_gramian()
            norms = K.diagonal().sqrt()
            cos = K / torch.outer(norms, norms)
            T = len(norms)
            cosines.append(float((cos.sum() - T) / (T * (T - 1))))
            sent.append(sum(state.last_step.bytes_sent.values()))
    with torch.no_grad():
        losses = {
            lang: float(((ddp.module(x) - y) ** 2).mean())
            for lang in LANGUAGES
            for x, y in [batch(lang, 10**6, 0)]
        }
    del ddp
    return {
        "losses": losses,
        "cosine": sum(cosines) / len(cosines) if cosines else float("nan"),
        "bytes": sum(sent) / len(sent) if sent else float("nan"),
    }


def worker(rank: int, port: int, aggregators: list[str], steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    results = {
        name: train(rank, None if name == "ddp" else name, steps) for name in ["ddp", *aggregators]
    }
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--aggregators", nargs="+", default=["mean", "mgda", "pcgrad", "upgrad"])
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.start_processes(
            worker,
            args=(port, args.aggregators, args.steps, out),
            nprocs=WORLD_SIZE,
            start_method="fork",
        )
        results = torch.load(out)
    header = ["update", *LANGUAGES, "worst", "mean cos", "bytes/step"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in results.items():
        losses = [r["losses"][lang] for lang in LANGUAGES]
        cells = [f"{v:.3f}" for v in losses] + [
            f"{max(losses):.3f}",
            f"{r['cosine']:.2f}",
            f"{r['bytes']:.0f}",
        ]
        print(f"| {'plain DDP' if name == 'ddp' else name} | " + " | ".join(cells) + " |")
    print(
        f"\nFinal training loss per language after {args.steps} steps on {WORLD_SIZE} gloo "
        f"ranks x {SLOTS_PER_RANK} slots (lower is better)."
    )


if __name__ == "__main__":
    main()
