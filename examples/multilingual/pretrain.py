"""The base model the example fine-tunes: a short single-process pretraining run, cached.

Fine-tuning needs a model that already knows the languages a little, as a real LLM would.
:func:`pretrain_base` trains a small ``transformers`` Llama (:func:`.model.small_config`) with
plain Lightning on mixed-language batches and saves it with its tokenizer as a Hugging Face
folder ``base-<hash>/`` (``save_pretrained``, plus ``pretraining.json``: its settings and final
loss); the hash covers the tokenizer, the text and every setting, so a second run with the same
ones loads the folder instead. :func:`prepare_base` does the whole stage (tokenizer and base
model) on any text, saying what it does. The folder is what ``--hf-model`` takes::

    python -m examples.multilingual.pretrain --languages en fr ru ar --cache-dir .cache/ml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader
from transformers import LlamaForCausalLM

from lightning_bmoo.callbacks import StepProgressBar

from .data import build_datasets
from .model import MultilingualLM, small_config
from .quiet import lightning_quiet, silence_known_noise
from .texts import BIBLE_TRANSLATIONS, load_bible
from .tokenizer import Tokenizer, train_tokenizer

__all__ = ["INFO_FILE", "base_path", "prepare_base", "pretrain_base"]

_DEFAULT_STEPS = 300
#: What a pretrained base folder says about its training (settings, losses, time).
INFO_FILE = "pretraining.json"


def pretrain_base(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    *,
    seq_len: int = 128,
    config: Mapping[str, Any] | None = None,
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
        cache_dir: where the ``base-<hash>/`` folders go.
        seq_len: tokens per sequence (and the model's maximum).
        config: ``LlamaConfig`` settings overriding :func:`.model.small_config`'s.
        steps, batch_size, lr, warmup_steps, seed: the training run (warm-up, then cosine).
        progress: show a progress bar (in optimizer steps) while training.

    Returns:
        The model folder (model, tokenizer and ``pretraining.json``), loadable with
        ``AutoModelForCausalLM.from_pretrained``; see :func:`base_path` for where it is before
        it exists.
    """
    settings = _settings(
        texts, tokenizer, seq_len, config, steps, batch_size, lr, warmup_steps, seed
    )
    path = _path(cache_dir, settings)
    if (path / INFO_FILE).is_file():
        return path

    start = time.perf_counter()
    datasets = build_datasets(texts, tokenizer, seq_len)
    loader = DataLoader(
        ConcatDataset(list(datasets.values())),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)  # the model's initial weights
    model = LlamaForCausalLM(small_config(tokenizer, seq_len, **(config or {})))
    module = MultilingualLM(
        model, pad_id=tokenizer.pad_id, lr=lr, warmup_steps=warmup_steps, max_steps=steps
    )
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
        "parameters": model.num_parameters(),
        "final_train_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - start, 1),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2))

    _write_folder_atomic(path, write)
    return path


def base_path(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    *,
    seq_len: int = 128,
    config: Mapping[str, Any] | None = None,
    steps: int = _DEFAULT_STEPS,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup_steps: int = 30,
    seed: int = 0,
) -> Path:
    """Where :func:`pretrain_base` with the same arguments keeps its model (it may not exist)."""
    settings = _settings(
        texts, tokenizer, seq_len, config, steps, batch_size, lr, warmup_steps, seed
    )
    return _path(cache_dir, settings)


def _settings(
    texts: Mapping[str, Sequence[str]],
    tokenizer: Tokenizer,
    seq_len: int,
    config: Mapping[str, Any] | None,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
) -> dict[str, Any]:
    shape = small_config(tokenizer, seq_len, **(config or {})).to_diff_dict()
    shape.pop("transformers_version", None)  # the model, not the library that describes it
    return {
        "config": shape,
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
    return Path(cache_dir) / f"base-{key}"


def prepare_base(
    texts: Mapping[str, Sequence[str]],
    cache_dir: str | Path,
    *,
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
        say: gets one line per stage (what was cached, what is trained, where it is); while
            pretraining a progress bar shows its steps. Silent when None.
        **pretrain_kwargs: further :func:`pretrain_base` arguments (``seq_len``, ``steps``...).

    Returns:
        ``(tokenizer, base model folder)``.
    """
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, cache_dir)
    how = "cached" if tokenizer.from_cache else f"trained in {time.perf_counter() - start:.1f} s"
    if say:
        say(f"tokenizer: {how}, vocabulary {tokenizer.vocab_size} ({tokenizer.path})")
    path = base_path(texts, tokenizer, cache_dir, **pretrain_kwargs)
    if say:
        steps = pretrain_kwargs.get("steps", _DEFAULT_STEPS)
        say(
            f"base model: cached ({path})"
            if (path / INFO_FILE).is_file()
            else f"pretraining base: {steps} steps on {len(texts)} languages, once (cached as "
            f"{path})"
        )
    path = pretrain_base(texts, tokenizer, cache_dir, progress=say is not None, **pretrain_kwargs)
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


def _write_folder_atomic(path: Path, write: Callable[[Path], None]) -> None:
    # Concurrent runs (or DDP ranks) may build the same base: readers must never see half a
    # folder. A rename is atomic; whoever renames second keeps the first one's (equal) folder.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, suffix=".tmp"))
    try:
        write(tmp)
        os.rename(tmp, path)
    except OSError:
        if not (path / INFO_FILE).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Pretrains (or loads from the cache) the base model on the Bible's Old Testament."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--languages", nargs="+", default=list(BIBLE_TRANSLATIONS), help="Bible languages"
    )
    parser.add_argument("--cache-dir", default=".cache/multilingual", help="models are kept here")
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
        steps=args.steps,
        batch_size=args.batch_size,
        say=print,
    )
    meta = json.loads((path / INFO_FILE).read_text())
    print(
        f"{meta['parameters']:,} parameters, {meta['steps']} steps in {meta['seconds']} s, "
        f"final train loss {meta['final_train_loss']:.3f}; a Hugging Face model folder: "
        f"--hf-model {path}"
    )


if __name__ == "__main__":
    main()
