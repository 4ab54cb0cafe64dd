"""The example's causal LM: a ``transformers`` model, optionally with LoRA, and its LightningModule.

The model is built from a small ``LlamaConfig`` (:func:`small_config`, what the example
pretrains) or loaded from a local Hugging Face directory (:func:`load_pretrained`). LoRA comes
from peft (:func:`with_adapters`): one adapter shared by all languages, or one per language,
selected by each batch's language.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual torch spelling)
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from lightning_bmoo.adapters import activate_language, add_language_adapters

from .tokenizer import Tokenizer

__all__ = [
    "ADAPTERS",
    "MultilingualLM",
    "causal_lm_loss",
    "load_pretrained",
    "small_config",
    "target_mask",
    "with_adapters",
]

#: ``--adapters``: train every weight, one LoRA adapter for all languages, or one per language.
ADAPTERS = ("none", "shared", "per-language")


def small_config(tokenizer: Tokenizer, max_seq_len: int, **overrides: Any) -> LlamaConfig:
    """A ~1.3M-parameter Llama (vocabulary 4096) with the tokenizer's special ids.

    Four layers of width 128 with 4 heads, tied input and output embeddings: the size the
    example pretrains in a few minutes on two CPU cores. ``overrides`` go to ``LlamaConfig``.
    """
    settings: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 128,
        "intermediate_size": 344,  # ~8/3 of the width, as in Llama: the MLP of a 4x GELU MLP
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": max_seq_len,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_id,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
    }
    settings.update(overrides)
    return LlamaConfig(**settings)


def load_pretrained(directory: str | Path, *, dtype: Any = "auto") -> PreTrainedModel:
    """A causal LM from a local Hugging Face directory, never from the Hub.

    Args:
        directory: a folder ``save_pretrained`` wrote (``config.json`` and the weights).
        dtype: as ``from_pretrained``'s (``"auto"``: the dtype of the saved weights).

    Raises:
        ValueError: if the folder holds no causal LM ``transformers`` can load, with the reason.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"{directory} is no Hugging Face model folder (no config.json); pass the folder that "
            "model.save_pretrained() wrote, with its tokenizer."
        )
    try:
        return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())  # one line: transformers' messages span several
        raise ValueError(f"{directory} holds no loadable causal LM: {reason}") from None


def with_adapters(
    model: PreTrainedModel,
    adapters: str,
    languages: Sequence[str],
    *,
    rank: int = 8,
    targets: Sequence[str] | None = None,
) -> nn.Module:
    """``model`` with LoRA adapters as ``adapters`` (one of :data:`ADAPTERS`) says.

    Args:
        model: the base model (frozen unless ``adapters == "none"``).
        adapters: ``"none"`` (``model`` itself, every weight trained), ``"shared"`` (one
            adapter for all languages) or ``"per-language"`` (one per language, named by it).
        languages: the training languages (for ``"per-language"``).
        rank: LoRA's rank ``r``; ``lora_alpha`` is ``2 * rank``.
        targets: module names to adapt (default: peft's choice for the model type).

    Raises:
        ValueError: for an unknown ``adapters``.
    """
    if adapters not in ADAPTERS:
        raise ValueError(f"adapters must be one of {ADAPTERS}, got {adapters!r}.")
    if adapters == "none":
        return model
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(targets) if targets else None,
        task_type="CAUSAL_LM",
    )
    if adapters == "shared":
        return get_peft_model(model, config)
    return add_language_adapters(model, sorted(languages), config)


def target_mask(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Which next-token targets ``input_ids[:, 1:]`` count: all but each row's trailing padding.

    Only padding after a row's last real token counts as padding, so a tokenizer whose pad token
    is its eos token (common in Hugging Face models) still learns the eos inside the text.
    """
    real = input_ids != pad_id
    # True up to each row's last real token: a reversed running "any" along the row.
    return real.flip(-1).cummax(-1).values.flip(-1)[:, 1:]


def causal_lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, pad_id: int, *, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy over the targets :func:`target_mask` keeps (mean or sum)."""
    keep = target_mask(input_ids, pad_id).reshape(-1)
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        input_ids[:, 1:].reshape(-1),
        reduction="none",
    )
    total = (losses * keep).sum()
    return total if reduction == "sum" else total / keep.sum().clamp(min=1)


class MultilingualLM(pl.LightningModule):
    """Causal LM fine-tuning with per-language validation, for any ``transformers`` causal LM.

    Logs ``train/loss`` every step; per validation epoch ``val/loss/<lang>`` and
    ``val/ppl/<lang>`` (token-weighted over all ranks) and ``val/loss``, the mean over
    languages, so that every language counts the same whatever its token count.

    Args:
        model: a causal LM, or a peft model over one (see :func:`with_adapters`). Only its
            parameters that require a gradient are trained.
        pad_id: the padding id of the batches (its trailing runs are not predicted).
        per_language: ``model`` has one adapter per language: each batch goes through its
            language's adapter (``lightning_bmoo.adapters.activate_language``).
        lr: peak learning rate of AdamW.
        weight_decay: applied to matrices only, not to norms, biases and embeddings.
        warmup_steps: linear warm-up from 0 to ``lr``.
        max_steps: length of the cosine decay; ``trainer.estimated_stepping_batches`` if None.
        min_lr_ratio: the learning rate at the end of the decay, as a fraction of ``lr``.
        languages: validation languages. Every rank must log the same metric keys, so fix
            them here when a rank's validation batches might miss a language
            (:func:`.data.build_val_loader` never does); by default each rank uses the languages
            it saw.
        gradient_checkpointing: recompute activations in the backward pass (less memory).

    Raises:
        TypeError: if ``per_language`` is set and ``model`` is no peft model.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pad_id: int,
        per_language: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        languages: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if per_language and not isinstance(model, PeftModel):
            raise TypeError(
                "per_language=True needs a peft model with one adapter per language "
                "(lightning_bmoo.adapters.add_language_adapters)."
            )
        self.save_hyperparameters(ignore=["model"])
        # from_pretrained returns a model in eval mode, and Lightning keeps each module's mode
        # as it finds it: without this, dropout and gradient checkpointing would stay off.
        self.model = model.train()
        self.pad_id, self.per_language = pad_id, per_language
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        self.languages = sorted(languages) if languages is not None else None
        self._val_sums: dict[str, torch.Tensor] = {}
        if gradient_checkpointing:
            base = model.get_base_model() if isinstance(model, PeftModel) else model
            # Non-reentrant: the frozen embeddings' output needs no grad for it to work.
            base.activation_checkpointing_enable({"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor, language: str | None = None) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]``, through ``language``'s adapter with per-language LoRA."""
        if self.per_language:
            if language is None:
                raise ValueError("A model with per-language adapters needs the batch's language.")
            activate_language(self.model, language)
        return self.model(input_ids=input_ids, use_cache=False).logits  # no generation here

    def loss_sum(self, input_ids: torch.Tensor, language: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(summed loss, predicted tokens)`` of a batch: exact token-weighted means add up."""
        loss = causal_lm_loss(self(input_ids, language), input_ids, self.pad_id, reduction="sum")
        return loss, target_mask(input_ids, self.pad_id).sum()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        input_ids = batch["input_ids"]
        loss = causal_lm_loss(self(input_ids, batch.get("language")), input_ids, self.pad_id)
        self.log("train/loss", loss, prog_bar=True, batch_size=input_ids.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        lang = batch["language"]
        loss_sum, tokens = self.loss_sum(batch["input_ids"], lang)
        sums = self._val_sums.setdefault(lang, torch.zeros(2, dtype=torch.float64))
        sums += torch.stack([loss_sum.detach().double().cpu(), tokens.double().cpu()])

    def on_validation_epoch_end(self) -> None:
        languages = self.languages if self.languages is not None else sorted(self._val_sums)
        if not languages:
            return
        zero = torch.zeros(2, dtype=torch.float64)
        local = torch.stack([self._val_sums.get(lang, zero) for lang in languages])
        # One reduction of the (loss sum, token count) pairs gives exact token-weighted means
        # over all ranks, which averaging per-rank means would not.
        total = self.trainer.strategy.reduce(local.to(self.device), reduce_op="sum").cpu()
        losses = []
        for lang, (loss_sum, tokens) in zip(languages, total.tolist()):
            if tokens == 0:
                continue
            loss = loss_sum / tokens
            losses.append(loss)
            # The values are already global; sync_dist only averages identical numbers and
            # keeps Lightning from warning about epoch-level logging under DDP.
            self.log(f"val/loss/{lang}", loss, sync_dist=True)
            self.log(f"val/ppl/{lang}", math.exp(min(loss, 50.0)), sync_dist=True)
        if losses:
            self.log("val/loss", sum(losses) / len(losses), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=(0.9, 0.95),
        )
        total = self.max_steps or int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _WarmupCosine(self.warmup_steps, total, self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class _WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
