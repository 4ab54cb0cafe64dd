"""The model: a tiny ``LlamaForCausalLM`` built from a config, its pretrained base, and losses.

:func:`prepare` trains the tokenizer and pretrains the base model on the Old Testament of the
regime's languages once, and caches both (regimes with the same languages and model share
them). Every arm then fine-tunes a copy of that base.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.data import ConcatDataset, DataLoader

from .config import HARNESS_VERSION, Regime
from .corpus import PAD_ID, Tokenizer, eval_batches, regime_texts, sequences, train_tokenizer


def build_model(regime: Regime, vocab_size: int) -> nn.Module:
    """A fresh ``LlamaForCausalLM`` of the regime's shape (no hub access)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    size = regime.model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=regime.seq_len,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def token_losses(model: nn.Module, input_ids: Tensor) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over the non-padding targets, and their number."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    targets = input_ids[:, 1:]
    mask = targets != PAD_ID
    loss = functional.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
    return loss, int(mask.sum())


def mean_loss(model: nn.Module, input_ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of a batch (what is trained)."""
    total, count = token_losses(model, input_ids)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Mapping[str, Sequence[Tensor]]) -> dict[str, float]:
    """Token-level mean loss per language."""
    model.eval()
    out = {}
    for lang, chunks in batches.items():
        total, count = 0.0, 0
        for ids in chunks:
            loss, n = token_losses(model, ids)
            total, count = total + float(loss), count + n
        out[lang] = total / max(count, 1)
    model.train()
    return out


def prepare_dir(regime: Regime, out: Path) -> Path:
    """Where the regime's tokenizer and base model are cached."""
    blob = json.dumps({"v": HARNESS_VERSION, **regime.pretrain_fingerprint()}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return out / "prepared" / f"{'-'.join(sorted(regime.languages))}-{digest}"


def prepare(regime: Regime, out: Path) -> dict[str, Any]:
    """Trains the tokenizer and the base model, or returns the cached ones' summary.

    Returns:
        ``{"dir", "seconds", "pretrain_loss", "base_val_loss", "base_test_loss", ...}``
        (``seconds`` 0 when cached); the base model's losses per language are those of the
        regime's held-out books before any fine-tuning.
    """
    folder = prepare_dir(regime, out)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return {**json.loads(meta_path.read_text()), "dir": str(folder), "seconds": 0.0}
    start = time.perf_counter()
    texts = regime_texts(regime, "pretrain")
    tokenizer = train_tokenizer(texts, regime.vocab_size)
    torch.manual_seed(0)
    model = build_model(regime, tokenizer.vocab_size)
    loss = _pretrain(
        model,
        ConcatDataset(list(sequences(texts, tokenizer, regime.seq_len).values())),
        regime.pretrain_steps,
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "tokenizer.model", tokenizer.model_bytes)
    buffer = _state_bytes(model)
    _write(folder / "base.pt", buffer)
    held_out = {
        split: evaluate(
            model,
            eval_batches(
                sequences(regime_texts(regime, split), tokenizer, regime.seq_len),
                regime.eval_sequences,
                regime.batch_size,
            ),
        )
        for split in ("validation", "test")
    }
    meta = {
        "pretrain_loss": loss,
        "base_val_loss": held_out["validation"],
        "base_test_loss": held_out["test"],
        "vocab_size": tokenizer.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_seconds": time.perf_counter() - start,
    }
    _write(meta_path, json.dumps(meta, indent=1).encode())
    return {**meta, "dir": str(folder), "seconds": meta["pretrain_seconds"]}


def load_prepared(regime: Regime, out: Path) -> tuple[Tokenizer, dict[str, Tensor]]:
    """The cached tokenizer and base state dict (see :func:`prepare`)."""
    folder = prepare_dir(regime, out)
    tokenizer = Tokenizer((folder / "tokenizer.model").read_bytes())
    state = torch.load(folder / "base.pt", map_location="cpu", weights_only=True)
    return tokenizer, state


def _pretrain(model: nn.Module, data: ConcatDataset, steps: int) -> float:
    """Mixed-language batches of 16, AdamW 3e-3, warm-up then cosine; the last losses' mean."""
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(data, batch_size=16, shuffle=True, drop_last=True, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps, max(1, steps // 12))
    )
    recent: list[float] = []
    step = 0
    while step < steps:
        for batch in loader:
            loss = mean_loss(model, batch["input_ids"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            recent = [*recent[-19:], loss.item()]
            step += 1
            if step == steps:
                break
    return sum(recent) / len(recent)


def warmup_cosine(steps: int, warmup: int, floor: float = 0.1):
    """Learning-rate factor: linear warm-up, then cosine down to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def static_weights(
    model: nn.Module, batches: Mapping[str, Sequence[Tensor]], languages: Sequence[str]
) -> dict[str, float]:
    """MGDA's weights on the base model's whole-model Gramian of the languages' gradients.

    The per-language loss weights of the ``static-mgda`` arm, fixed for the whole run. When the
    languages' gradients are nearly orthogonal, MGDA's weights are about ``1 / |g_l|^2``: if
    what MGDA does is a reweighting by gradient size, this static version does the same; if it
    needs to adapt per step and per bucket, it does not.
    """
    from lightning_bmoo import get_aggregator

    rows = []
    for lang in languages:
        model.zero_grad(set_to_none=True)
        for ids in batches[lang]:
            (mean_loss(model, ids) / len(batches[lang])).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    G = torch.stack(rows).double()
    weights = get_aggregator("mgda")(G @ G.T)
    return {lang: float(w) for lang, w in zip(languages, weights)}


def _state_bytes(model: nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    # Two workers may prepare regimes that share a base: neither may read a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
