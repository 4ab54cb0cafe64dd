"""The model the example fine-tunes, from the options to the folder it is saved in.

:func:`build_model` loads the base (pretrained here or ``--hf-model``), adds the LoRA adapters
``--adapters`` asks for and wraps it in :class:`.model.MultilingualLM`; :func:`save_trained`
writes what was trained with ``save_pretrained`` at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from lightning_bmoo.adapters import check_adapter_name

from .cli import UsageError
from .model import MultilingualLM, load_pretrained, with_adapters
from .tokenizer import Tokenizer

__all__ = ["build_model", "describe_saved", "describe_trainable", "save_trained"]


def build_model(
    args: argparse.Namespace, base: Path, tokenizer: Tokenizer, languages: list[str]
) -> MultilingualLM:
    """The base model with the adapters ``--adapters`` asks for, in its LightningModule.

    Raises:
        UsageError: if the model cannot be loaded, or does not fit the tokenizer, ``--seq-len``
            or ``--lora-targets``.
    """
    try:
        # Full fine-tuning keeps float32 master weights; LoRA leaves the frozen base as saved.
        model = load_pretrained(base, dtype=torch.float32 if args.adapters == "none" else "auto")
    except ValueError as err:
        raise UsageError("--hf-model", str(err)) from None
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer.vocab_size > rows:
        raise UsageError(
            "--hf-model",
            f"its tokenizer has {tokenizer.vocab_size} ids but the model embeds {rows}",
        )
    if args.adapters == "per-language":
        try:
            for language in languages:
                check_adapter_name(language)  # adapters are named by the data's languages
        except ValueError as err:
            raise UsageError("--data-dir", str(err)) from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and args.seq_len > limit:
        raise UsageError("--seq-len", f"{args.seq_len} exceeds the model's {limit} positions")
    try:
        model = with_adapters(
            model, args.adapters, languages, rank=args.lora_rank, targets=args.lora_targets
        )
    except ValueError as err:
        raise UsageError("--lora-targets", str(err)) from None
    return MultilingualLM(
        model,
        pad_id=tokenizer.pad_id,
        per_language=args.adapters == "per-language",
        lr=args.lr,
        max_steps=args.steps,
        languages=languages,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def save_trained(
    module: MultilingualLM, tokenizer: Tokenizer, run_dir: Path, adapters: str
) -> Path:
    """Saves what was trained with ``save_pretrained``, with the tokenizer; returns the folder.

    ``model/`` (every weight: ``AutoModelForCausalLM.from_pretrained``), ``adapter/`` (the shared
    LoRA adapter: ``PeftModel.from_pretrained(base, folder)``) or ``adapters/<lang>/`` (one per
    language: ``lightning_bmoo.adapters.load_language_adapters(base, folder)``).
    """
    folder = run_dir / {"none": "model", "shared": "adapter", "per-language": "adapters"}[adapters]
    module.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def describe_saved(folder: Path, adapters: str, base: str) -> str:
    """One line: where :func:`save_trained` put the result and how to load it."""
    if adapters == "none":
        return f"fine-tuned model: {folder.name}/ (AutoModelForCausalLM.from_pretrained)"
    if adapters == "shared":
        return f"LoRA adapter: {folder.name}/ (PeftModel.from_pretrained on the base {base})"
    return (
        f"LoRA adapters: {folder.name}/<language>/ (lightning_bmoo.adapters."
        f"load_language_adapters on the base {base})"
    )


def describe_trainable(model: nn.Module, adapters: str) -> str:
    """What is trained, and how many of the parameters, for the fine-tuning stage's line."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    what = {
        "none": "every weight",
        "shared": "one LoRA adapter",
        "per-language": "LoRA per language",
    }
    return f"training {what[adapters]} ({trainable:,} of {total:,} parameters)"
