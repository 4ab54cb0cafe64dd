"""The hook's cost with LoRA on a Hugging Face model: it follows the trainable parameters.

One group of forked gloo processes (one thread each) builds the same small ``transformers``
Llama once per configuration and trains them in turn, one step each per round (interleaving
keeps the ratios honest on a busy machine), on random tokens, one language per slot:

* every weight trained, with plain DDP and with the bucket-MOO hook (MGDA, sharded);
* one shared LoRA adapter (the base frozen), plain DDP and the hook;
* one LoRA adapter per language (``lightning_bmoo.adapters``), plain DDP and the hook, both
  with ``find_unused_parameters=True``.

Printed per configuration: trainable and total parameters, median step time and its ratio to
plain DDP of the same setup, the time spent inside the hook, and the bytes each rank sent per
step. The hook's own time and traffic should shrink with the trainable parameters, not stay
with the model's size.

    python benchmarks/lora_overhead.py [--steps 12] [--slots 1] [--rank 8]

Needs the ``hf`` extra (transformers, peft).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.distributed as dist
from lm import LANGUAGES
from peft import LoraConfig, get_peft_model
from ranks import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_bmoo.adapters import activate_language, add_language_adapters
from lightning_bmoo.comm import register_bucket_moo_hook

VOCAB, WIDTH, LAYERS, HEADS, SEQ, BATCH = 8000, 384, 6, 6, 64, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(setup: str, rank: int) -> torch.nn.Module:
    """The model of a setup: ``full``, ``shared`` (one LoRA adapter) or ``per-language``."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=1024,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM")
    if setup == "shared":
        return get_peft_model(model, lora)
    if setup == "per-language":
        return add_language_adapters(model, LANGUAGES, lora)
    return model


def _step(run: dict, rank: int, step: int, K: int) -> None:
    ddp, state = run["ddp"], run["state"]
    for k in range(K):
        language = LANGUAGES[(step + rank * K + k) % len(LANGUAGES)]
        if run["setup"] == "per-language":
            activate_language(ddp.module, language)
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=run["g"])
        if state is None:
            # Plain DDP: one all-reduce per step, after the last microbatch.
            context = ddp.no_sync() if k < K - 1 else contextlib.nullcontext()
            with context:
                (ddp(input_ids=ids, labels=ids, use_cache=False).loss / K).backward()
        else:
            with state.slot(language):
                (ddp(input_ids=ids, labels=ids, use_cache=False).loss / K).backward()
    run["opt"].step()
    run["opt"].zero_grad(set_to_none=True)


def _run(rank: int, world: int, configs: list[dict], args: argparse.Namespace) -> list[dict]:
    runs = []
    for config in configs:
        model = build(config["setup"], args.rank)
        ddp = DDP(
            model,
            bucket_cap_mb=args.bucket_mb,
            forward_sync_buffers=False,  # the rotary buffers never change
            find_unused_parameters=config["setup"] == "per-language",
        )
        state = None
        if config["hook"]:
            state = register_bucket_moo_hook(ddp, "mgda", slots_per_rank=args.slots)
        trainable = [p for p in model.parameters() if p.requires_grad]
        runs.append(
            {
                **config,
                "ddp": ddp,
                "state": state,
                "opt": torch.optim.SGD(trainable, lr=1e-4),
                "g": torch.Generator().manual_seed(rank),
                "times": [],
                "sent": [],
                "hook_s": [],
                "trainable": sum(p.numel() for p in trainable),
                "total": sum(p.numel() for p in model.parameters()),
            }
        )
    warmup = 2
    for step in range(warmup + args.steps):
        for run in runs:
            dist.barrier()
            start = time.perf_counter()
            _step(run, rank, step, args.slots)
            run["times"].append(time.perf_counter() - start)
            last = run["state"].last_step if run["state"] is not None else None
            if last is not None and step >= 1:  # DDP's first iteration has one huge bucket
                run["sent"].append(sum(last.bytes_sent.values()))
                run["hook_s"].append(last.hook_seconds)
    results = []
    for run in runs:
        all_reduce = 2 * (world - 1) / world * run["trainable"] * 4
        result = {key: run[key] for key in ("setup", "hook", "trainable", "total")}
        result["step"] = statistics.median(run["times"][warmup:])
        result["sent"] = statistics.median(run["sent"]) if run["sent"] else all_reduce
        result["hook_s"] = statistics.median(run["hook_s"]) if run["hook_s"] else 0.0
        results.append(result)
    runs.clear()
    return results


def run_configs(configs: list[dict], args: argparse.Namespace) -> list[dict]:
    """Runs the configurations side by side in fresh processes; rank 0's measurements."""
    return run_ranks(_run, args.world_size, configs, args)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="measured steps (after 2 warm-up)")
    parser.add_argument("--slots", type=int, default=1, help="K: microbatches per rank")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket size")
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    configs = [
        {"setup": setup, "hook": hook}
        for setup in ("full", "shared", "per-language")
        for hook in (False, True)
    ]
    rows = run_configs(configs, args)
    print(
        f"{args.world_size} gloo ranks x 1 thread, K = {args.slots}, Llama {LAYERS} x {WIDTH}, "
        f"vocabulary {VOCAB}, LoRA rank {args.rank} on {len(TARGETS)} projections, median of "
        f"{args.steps} interleaved steps\n"
    )
    print(
        "| trained | update | trainable | of total | step ms | x plain DDP | hook ms "
        "| hook ms per M trainable | MB sent |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    plain: dict[str, dict] = {}
    for r in rows:
        plain.setdefault(r["setup"], r)
        trainable_m = r["trainable"] / 1e6
        print(
            f"| {r['setup']} | {'hook (mgda)' if r['hook'] else 'plain DDP'} "
            f"| {trainable_m:.2f}M | {r['trainable'] / r['total']:.1%} of {r['total'] / 1e6:.1f}M "
            f"| {r['step'] * 1e3:.0f} | {r['step'] / plain[r['setup']]['step']:.3f} "
            f"| {r['hook_s'] * 1e3:.1f} | {r['hook_s'] * 1e3 / trainable_m:.2f} "
            f"| {r['sent'] / 1e6:.2f} |"
        )
    full = next(r for r in rows if r["setup"] == "full" and r["hook"])
    for r in rows:
        if r["hook"] and r is not full:
            print(
                f"\n{r['setup']}: {r['trainable'] / full['trainable']:.3f} of the full model's "
                f"trainable parameters; hook time {r['hook_s'] / full['hook_s']:.3f} and bytes "
                f"sent {r['sent'] / full['sent']:.3f} of the full model's",
                end="",
            )
    print()


if __name__ == "__main__":
    main()
