"""The base model the example fine-tunes: a short single-process pretraining run, cached.

Fine-tuning needs a model that already knows the languages a little, as a real LLM would.
:func:`pretrain_base` trains :class:`.model.TransformerLM` with plain Lightning on mixed-language
batches and saves its state dict as ``base-<hash>.pt`` (with a ``.json`` of its settings and
final loss); the hash covers the tokenizer, the text and every setting, so a second run with
the same ones loads the file instead. :func:`prepare_base` does the whole stage on the Bible
data, or takes a checkpoint you pass instead::

    python -m examples.multilingual.pretrain --languages en fr ru ar --cache-dir .cache/ml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader

from .data import build_datasets, load_bible
from .model import LMConfig, MultilingualLM
from .tokenizer import Tokenizer, train_tokenizer

__all__ = ["check_base", "prepare_base", "pretrain_base"]


def pretrain_base(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    *,
    config: LMConfig | None = None,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup_steps: int = 30,
    seed: int = 0,
) -> Path:
    """Trains the base model on ``texts`` (all languages mixed) or returns the cached one.

    Args:
        texts: ``{language: [text, ...]}``, the pretraining text.
        tokenizer: the tokenizer fine-tuning will use too.
        cache_dir: where ``base-<hash>.pt`` (state dict) and ``base-<hash>.json`` go.
        config: model shape; its ``vocab_size`` is set from the tokenizer.
        steps, batch_size, lr, warmup_steps, seed: the training run (warm-up, then cosine).

    Returns:
        The state dict file, loadable with :meth:`.model.MultilingualLM.load_base`.
    """
    config = replace(config or LMConfig(), vocab_size=tokenizer.vocab_size)
    settings = {
        "config": asdict(config),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "tokenizer": tokenizer.fingerprint,
        "text": _text_digest(texts),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"base-{key}.pt"
    if path.is_file():
        return path

    start = time.perf_counter()
    datasets = build_datasets(texts, tokenizer, config.max_seq_len)
    loader = DataLoader(
        ConcatDataset(list(datasets.values())),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)  # the model's initial weights
    module = MultilingualLM(config, lr=lr, warmup_steps=warmup_steps, max_steps=steps)
    trace = _LossTrace()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[trace],
    )
    trainer.fit(module, train_dataloaders=loader)
    tail = trace.losses[-max(1, min(20, len(trace.losses))) :]
    info = {
        **settings,
        "languages": sorted(texts),
        "sequences": {lang: len(ds) for lang, ds in datasets.items()},
        "parameters": module.model.num_parameters(),
        "final_train_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - start, 1),
    }
    _write_atomic(path, lambda f: torch.save(module.model.state_dict(), f))
    _write_atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps(info, indent=2).encode()))
    return path


def check_base(checkpoint: str | Path, config: LMConfig) -> Path:
    """Checks that ``checkpoint`` exists and fits a model of shape ``config``; returns its path.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is no state dict or does not fit (another vocabulary or shape).
    """
    MultilingualLM(config).load_base(checkpoint)
    return Path(checkpoint)


def prepare_base(
    languages: Sequence[str] | None,
    cache_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    config: LMConfig | None = None,
    max_verses: int | None = 4000,
    **pretrain_kwargs: Any,
) -> tuple[Tokenizer, Path]:
    """The example's base stage on the Bible data: tokenizer and base model, both cached.

    The tokenizer is trained on the pretraining split only, like a real base model's, so the
    fine-tuning and validation text is new to both.

    Args:
        languages: Bible languages to pretrain on; all when None.
        cache_dir: cache of the tokenizer and base models.
        checkpoint: your own base state dict, used instead of pretraining (checked to fit).
        config: model shape (``vocab_size`` comes from the tokenizer).
        max_verses: pretraining verses per language, spread over the split. The default
            4000 (~1.6M tokens in all at nine languages) already exceeds what 300 steps of
            16 x 128 tokens read, and tokenising the whole split would take longer than that.
            The tokenizer always learns from the whole split.
        **pretrain_kwargs: further :func:`pretrain_base` arguments.

    Returns:
        ``(tokenizer, base_checkpoint_path)``.
    """
    tokenizer = train_tokenizer(load_bible(languages, "pretrain"), cache_dir)
    config = replace(config or LMConfig(), vocab_size=tokenizer.vocab_size)
    if checkpoint is not None:
        return tokenizer, check_base(checkpoint, config)
    texts = load_bible(languages, "pretrain", max_verses=max_verses)
    return tokenizer, pretrain_base(texts, tokenizer, cache_dir, config=config, **pretrain_kwargs)


class _LossTrace(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *_: Any
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def _text_digest(texts: Mapping[str, Sequence[str]]) -> str:
    h = hashlib.sha256()
    for lang in sorted(texts):
        h.update(lang.encode() + b"\1")
        for t in texts[lang]:
            h.update(t.encode() + b"\0")
    return h.hexdigest()


def _write_atomic(path: Path, write: Any) -> None:
    # Concurrent runs (or DDP ranks) may build the same base: readers must never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        write(f)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", nargs="+", default=None, help="default: all nine")
    parser.add_argument("--cache-dir", default=".cache/multilingual")
    parser.add_argument("--checkpoint", default=None, help="use this base state dict instead")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-verses", type=int, default=4000, help="pretraining verses/language")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, path = prepare_base(
        args.languages,
        args.cache_dir,
        checkpoint=args.checkpoint,
        max_verses=args.max_verses,
        steps=args.steps,
        batch_size=args.batch_size,
    )
    print(f"tokenizer: {tokenizer.path} (vocab {tokenizer.vocab_size})")
    print(f"base model: {path} ({time.perf_counter() - start:.1f} s)")
    info = path.with_suffix(".json")
    if info.is_file():
        meta = json.loads(info.read_text())
        print(
            f"{meta['parameters']:,} parameters, {meta['steps']} steps in {meta['seconds']} s, "
            f"final train loss {meta['final_train_loss']:.3f}"
        )


if __name__ == "__main__":
    main()
