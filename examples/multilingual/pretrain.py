"""The base model the example fine-tunes: a short single-process pretraining run, cached.

Fine-tuning needs a model that already knows the languages a little, as a real LLM would.
:func:`pretrain_base` trains :class:`.model.TransformerLM` with plain Lightning on mixed-language
batches and saves its state dict as ``base-<hash>.pt`` (with a ``.json`` of its settings and
final loss); the hash covers the tokenizer, the text and every setting, so a second run with
the same ones loads the file instead. :func:`prepare_base` does the whole stage (tokenizer and
base model) on any text, saying what it does, or takes a checkpoint you pass instead::

    python -m examples.multilingual.pretrain --languages en fr ru ar --cache-dir .cache/ml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader

from lightning_bmoo.callbacks import StepProgressBar

from .data import build_datasets
from .model import LMConfig, MultilingualLM
from .quiet import lightning_quiet, silence_known_noise
from .texts import BIBLE_TRANSLATIONS, load_bible
from .tokenizer import Tokenizer, train_tokenizer

__all__ = ["base_path", "check_base", "prepare_base", "pretrain_base"]

_DEFAULT_STEPS = 300


def pretrain_base(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    *,
    config: LMConfig | None = None,
    steps: int = _DEFAULT_STEPS,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup_steps: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Trains the base model on ``texts`` (all languages mixed) or returns the cached one.

    Args:
        texts: ``{language: [text, ...]}``, the pretraining text.
        tokenizer: the tokenizer fine-tuning will use too.
        cache_dir: where ``base-<hash>.pt`` (state dict) and ``base-<hash>.json`` go.
        config: model shape; its ``vocab_size`` is set from the tokenizer.
        steps, batch_size, lr, warmup_steps, seed: the training run (warm-up, then cosine).
        progress: show a progress bar (in optimizer steps) while training.

    Returns:
        The state dict file, loadable with :meth:`.model.MultilingualLM.load_base`; see
        :func:`base_path` for where it is before it exists.
    """
    config = replace(config or LMConfig(), vocab_size=tokenizer.vocab_size)
    settings = _settings(texts, tokenizer, config, steps, batch_size, lr, warmup_steps, seed)
    path = _path(cache_dir, settings)
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
    with lightning_quiet():  # which devices exist, why fit stopped: nothing to act on here
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            max_epochs=-1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            callbacks=[trace, StepProgressBar("pretraining base")] if progress else [trace],
        )
        # No validation data, said explicitly: the module's validation_step is fine-tuning's.
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=[])
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


def base_path(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    *,
    config: LMConfig | None = None,
    steps: int = _DEFAULT_STEPS,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup_steps: int = 30,
    seed: int = 0,
) -> Path:
    """Where :func:`pretrain_base` with the same arguments keeps its model (it may not exist)."""
    config = replace(config or LMConfig(), vocab_size=tokenizer.vocab_size)
    settings = _settings(texts, tokenizer, config, steps, batch_size, lr, warmup_steps, seed)
    return _path(cache_dir, settings)


def _settings(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    config: LMConfig,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "tokenizer": tokenizer.fingerprint,
        "text": _text_digest(texts),
    }


def _path(cache_dir: str | Path, settings: Mapping[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"base-{key}.pt"


def check_base(checkpoint: str | Path, config: LMConfig) -> Path:
    """Checks that ``checkpoint`` exists and fits a model of shape ``config``; returns its path.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is no state dict or does not fit (another vocabulary or shape).
    """
    MultilingualLM(config).load_base(checkpoint)
    return Path(checkpoint)


def prepare_base(
    texts: Mapping[str, Sequence[str]],
    cache_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    config: LMConfig | None = None,
    say: Callable[[str], None] | None = None,
    **pretrain_kwargs: Any,
) -> tuple[Tokenizer, Path]:
    """The base stage: a tokenizer and a base model for ``texts``, each trained once and cached.

    The tokenizer learns from the pretraining text only, like a real base model's, so the
    fine-tuning and validation text is new to both.

    Args:
        texts: ``{language: [text, ...]}``, the pretraining text (e.g. ``load_bible(langs,
            "pretrain")``).
        cache_dir: cache of the tokenizer and base models.
        checkpoint: your own base state dict, used instead of pretraining (checked to fit).
        config: model shape (``vocab_size`` comes from the tokenizer).
        say: gets one line per stage (what was cached, what is trained, where it is); while
            pretraining a progress bar shows its steps. Silent when None.
        **pretrain_kwargs: further :func:`pretrain_base` arguments (``steps``, ``seed``...).

    Returns:
        ``(tokenizer, base_checkpoint_path)``.
    """
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, cache_dir)
    how = "cached" if tokenizer.from_cache else f"trained in {time.perf_counter() - start:.1f} s"
    if say:
        say(f"tokenizer: {how}, vocabulary {tokenizer.vocab_size} ({tokenizer.path})")
    config = replace(config or LMConfig(), vocab_size=tokenizer.vocab_size)
    if checkpoint is not None:
        path = check_base(checkpoint, config)
        if say:
            say(f"base model: your checkpoint {path}")
        return tokenizer, path
    path = base_path(texts, tokenizer, cache_dir, config=config, **pretrain_kwargs)
    if say:
        steps = pretrain_kwargs.get("steps", _DEFAULT_STEPS)
        say(
            f"base model: cached ({path})"
            if path.is_file()
            else f"pretraining base: {steps} steps on {len(texts)} languages, once (cached as "
            f"{path})"
        )
    path = pretrain_base(
        texts, tokenizer, cache_dir, config=config, progress=say is not None, **pretrain_kwargs
    )
    return tokenizer, path


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
    """Pretrains (or loads from the cache) the base model on the Bible's Old Testament."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--languages", nargs="+", default=list(BIBLE_TRANSLATIONS), help="Bible languages"
    )
    parser.add_argument("--cache-dir", default=".cache/multilingual", help="models are kept here")
    parser.add_argument("--checkpoint", help="use this base state dict instead of pretraining")
    parser.add_argument("--steps", type=int, default=_DEFAULT_STEPS, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument(
        "--max-verses", type=int, default=4000, help="pretraining verses per language (<= 4000)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.languages) - set(BIBLE_TRANSLATIONS))
    if unknown:
        parser.error(f"argument --languages: no Bible for {unknown}")
    silence_known_noise()
    torch.set_num_threads(args.threads)
    texts = load_bible(args.languages, "pretrain", max_verses=args.max_verses)
    _, path = prepare_base(
        texts,
        args.cache_dir,
        checkpoint=args.checkpoint,
        steps=args.steps,
        batch_size=args.batch_size,
        say=print,
    )
    info = path.with_suffix(".json")
    if info.is_file():
        meta = json.loads(info.read_text())
        print(
            f"{meta['parameters']:,} parameters, {meta['steps']} steps in {meta['seconds']} s, "
            f"final train loss {meta['final_train_loss']:.3f}"
        )


if __name__ == "__main__":
    main()
