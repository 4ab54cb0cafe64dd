"""One fine-tuning run: the base model, one arm's update rule, a learning rate and a seed.

Single process: one gloo rank (world size 1) runs the step's ``K`` slots (one microbatch of
one language each) one after another. The hook's arithmetic is the same as ``W * K`` slots
over ``W`` ranks, so two such processes use two cores. Averaging and static-weight arms
accumulate ``K`` backward passes without the hook (what plain data-parallel training
computes); the other arms register the bucket-MOO hook on a DDP wrapper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_bmoo.data import LanguageBatchSampler

from .config import Regime, RunSpec
from .corpus import Tokenizer, eval_batches, regime_texts, sequences
from .model import build_model, evaluate, load_prepared, mean_loss, static_weights, warmup_cosine


@dataclass
class RegimeData:
    """What every run of a regime reads, built once per worker process."""

    tokenizer: Tokenizer
    base: dict[str, Tensor]
    train: dict[str, Any]  # language -> LMSequenceDataset
    validation: dict[str, list[Tensor]]
    test: dict[str, list[Tensor]]
    static_weights: dict[str, float]


_CACHE: dict[str, RegimeData] = {}


def regime_data(regime: Regime, out: Path) -> RegimeData:
    """The regime's tokenizer, base model and token sequences (cached per process)."""
    key = repr(regime.fingerprint())
    if key not in _CACHE:
        tokenizer, base = load_prepared(regime, out)
        split = {
            s: sequences(regime_texts(regime, s), tokenizer, regime.seq_len)
            for s in ("train", "validation", "test")
        }
        model = build_model(regime, tokenizer.vocab_size)
        model.load_state_dict(base)
        probe = eval_batches(split["train"], 4 * regime.batch_size, regime.batch_size)
        _CACHE[key] = RegimeData(
            tokenizer,
            base,
            split["train"],
            eval_batches(split["validation"], regime.eval_sequences, regime.batch_size),
            eval_batches(split["test"], regime.eval_sequences, regime.batch_size),
            static_weights(model, probe, regime.languages),
        )
    return _CACHE[key]


def ensure_process_group() -> None:
    """A one-rank gloo group (in-memory store: no port, no file)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def finetune(spec: RunSpec, out: Path) -> dict[str, Any]:
    """Runs ``spec`` and returns its result (losses per language on validation and test).

    A run whose training loss stops being finite ends there and is marked ``diverged``; its
    losses are infinite, so the learning-rate selection passes over it.
    """
    regime, arm = spec.regime, spec.arm
    data = regime_data(regime, out)
    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = build_model(regime, data.tokenizer.vocab_size)
    model.load_state_dict(data.base)
    model.train()
    K = regime.slots
    sampler, dataset = LanguageBatchSampler.from_datasets(
        data.train,
        regime.batch_size,
        probabilities=arm.temperature,
        slots_per_rank=K,
        coverage=False,  # follow the temperature exactly (uniform: every language once a step)
        seed=spec.seed,
        steps_per_epoch=regime.steps,
        drop_last=True,
        rank=0,
        world_size=1,
    )
    batches = iter(sampler)
    state = None
    net: torch.nn.Module = model
    if arm.aggregator is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from lightning_bmoo.comm import register_bucket_moo_hook

        ensure_process_group()
        net = DDP(model, bucket_cap_mb=regime.model.bucket_cap_mb)
        state = register_bucket_moo_hook(
            net,
            arm.aggregator,
            slots_per_rank=K,
            granularity=arm.granularity,
            direction_only=arm.direction_only,
            seed=spec.seed,
        )
    weights = _loss_weights(arm.loss_weights, data, regime)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(regime.steps, max(1, regime.steps // 10))
    )
    diagnostics: list[dict[str, Any]] = []
    peak_extra = 0
    diverged = False
    train_loss = math.nan
    for _ in range(regime.steps):
        losses = []
        for _k in range(K):
            indices = next(batches)
            lang = dataset[indices[0]]["language"]
            ids = torch.stack([dataset[i]["input_ids"] for i in indices])
            loss = mean_loss(net, ids)
            losses.append(loss.item())
            scaled = loss * (weights[lang] * len(weights) if weights else 1.0) / K
            if state is None:
                scaled.backward()
            else:
                with state.slot(lang):
                    scaled.backward()
        train_loss = sum(losses) / len(losses)
        if not math.isfinite(train_loss):
            diverged = True
            break
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if state is not None and state.last_step is not None:
            peak_extra = max(peak_extra, state.last_step.peak_extra_bytes)
            diagnostics.append(step_diagnostics(state.last_step))
    seconds = time.perf_counter() - start
    if diverged:
        val = {lang: math.inf for lang in regime.languages}
        test = dict(val)
    else:
        val, test = evaluate(model, data.validation), evaluate(model, data.test)
    del net, state
    return {
        "spec": {"regime": regime.name, "arm": arm.name, "lr": spec.lr, "seed": spec.seed},
        "key": spec.key,
        "val_loss": val,
        "test_loss": test,
        "diverged": diverged,
        "final_train_loss": train_loss,
        "seconds": seconds,
        "hook_peak_extra_mb": peak_extra / 2**20,
        "loss_weights": weights or None,
        "diagnostics": _average(diagnostics),
    }


def _loss_weights(kind: str | None, data: RegimeData, regime: Regime) -> dict[str, float]:
    if kind is None:
        return {}
    if kind == "mgda-at-start":
        return dict(data.static_weights)
    raise ValueError(f"Unknown loss weighting {kind!r}.")


def step_diagnostics(stats: Any) -> dict[str, Any]:
    """What the hook's Gramians say about one step, at no extra cost.

    ``length_ratio``: the applied update's length over the mean's (whole model);
    ``own_length_ratio``: the aggregator's own, before any direction-only rescaling;
    ``cos_mean``/``cos_min``: cosines between the languages' whole-model gradients;
    ``conflict_rate``: the share of (bucket, language pair) with a negative inner product;
    ``weight_share``: each language's share of the weights, averaged over buckets by size.
    """
    tasks = stats.tasks
    T = len(tasks)
    update = mean = own = 0.0
    conflicts = pairs = 0
    share = torch.zeros(T, dtype=torch.float64)
    size = 0
    ones = torch.ones(T, dtype=torch.float64) / T
    for group in stats.groups:
        M = group.gramian
        w = group.weights
        update += float(w @ M @ w)
        own += float(w @ M @ w) / group.scale**2
        mean += float(ones @ M @ ones)
        upper = torch.triu(M, diagonal=1)[torch.triu(torch.ones(T, T, dtype=torch.bool), 1)]
        conflicts += int((upper < 0).sum())
        pairs += upper.numel()
        total = float(w.sum())
        if total > 0:
            share += group.numel * w / total
            size += group.numel
    M = stats.total_gramian()
    norms = M.diagonal().clamp_min(1e-300).sqrt()
    cos = M / norms[:, None] / norms[None, :]
    off = cos[torch.triu(torch.ones(T, T, dtype=torch.bool), 1)]
    return {
        "length_ratio": math.sqrt(update / mean) if mean > 0 else math.nan,
        "own_length_ratio": math.sqrt(own / mean) if mean > 0 else math.nan,
        "cos_mean": float(off.mean()) if off.numel() else math.nan,
        "cos_min": float(off.min()) if off.numel() else math.nan,
        "conflict_rate": conflicts / pairs if pairs else math.nan,
        "weight_share": {t: float(s) / max(size, 1) for t, s in zip(tasks, share)},
    }


def _average(rows: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = {k: sum(r[key][k] for r in rows) / len(rows) for k in value}
        else:
            out[key] = sum(r[key] for r in rows) / len(rows)
    return out
