"""Multilingual fine-tuning with bucket-level MOO: the package's main example.

Stages, all offline:

1. base model: a SentencePiece tokenizer and a small causal transformer pretrained on the
   Old Testament of every language (cached), or your own checkpoint (``--base-checkpoint``);
2. fine-tuning on the New Testament with ``BucketMOOStrategy`` + ``LanguageBatchSampler`` +
   ``InterferenceMonitor`` on ``--devices`` CPU processes over gloo (or GPUs over NCCL),
   logged to W&B (offline unless you are logged in) and to CSV;
3. a per-language validation table, and a local HTML conflict report.

    python -m examples.multilingual.finetune --aggregator mgda --steps 150

Your own data: ``--data-dir DIR`` with one ``<lang>.txt`` (a line per example) or
``<lang>.jsonl`` (field ``text``) per language; a tenth of each is held out for validation.
"""

from __future__ import annotations

import argparse
import json
import netrc
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from lightning_bmoo import BucketMOOStrategy, available_aggregators
from lightning_bmoo.callbacks import InterferenceMonitor
from lightning_bmoo.comm import GRANULARITIES, TRANSPORTS

from .data import (
    build_datasets,
    build_train_loader,
    build_val_loader,
    holdout_split,
    load_bible,
    load_folder,
)
from .model import LMConfig, MultilingualLM
from .pretrain import check_base, prepare_base, pretrain_base
from .tokenizer import Tokenizer, train_tokenizer

DEFAULT_LANGUAGES = ["ar", "de", "en", "fa", "fr", "ru"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The example's command line (every knob of the run)."""
    p = argparse.ArgumentParser(
        description="Multilingual fine-tuning with bucket-level MOO (lightning_bmoo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--languages",
        nargs="+",
        default=DEFAULT_LANGUAGES,
        help="Bible languages (en fr it es de ro ru ar fa)",
    )
    p.add_argument("--data-dir", type=Path, help="your own data instead of the Bible")
    p.add_argument("--aggregator", default="mgda", choices=available_aggregators())
    p.add_argument(
        "--aggregator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. c=0.5 for cagrad (repeatable)",
    )
    p.add_argument("--transport", default="sharded", choices=list(TRANSPORTS))
    p.add_argument("--granularity", default="bucket", choices=list(GRANULARITIES))
    p.add_argument("--bucket-mb", type=float, default=0.5, help="DDP bucket size")
    p.add_argument(
        "--temperature",
        type=float,
        default=5.0,
        help="sampling temperature tau (p ~ n^(1/tau)); 0 for uniform",
    )
    p.add_argument("--devices", type=int, default=2, help="processes (CPU) or GPUs")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument(
        "--slots-per-rank",
        type=int,
        default=3,
        help="K: language-homogeneous microbatches per rank per step",
    )
    p.add_argument("--steps", type=int, default=150, help="fine-tuning optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-verses", type=int, default=200, help="validation verses per language")
    p.add_argument("--val-every", type=int, default=50, help="validate every N steps")
    p.add_argument("--monitor-every", type=int, default=10, help="interference logging interval")
    p.add_argument(
        "--logger",
        default="wandb",
        choices=["wandb", "csv"],
        help="wandb also writes CSV; W&B runs offline unless you are logged in",
    )
    p.add_argument("--base-checkpoint", type=Path, help="your own base model state dict")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs"), help="logs, report, results")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/lightning_bmoo"),
        help="tokenizer and base model cache",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="run name (default: from the aggregator and seed)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p.parse_args(argv)


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--aggregator-option expects KEY=VALUE, got {pair!r}")
        options[key] = json.loads(value) if value[:1] in "-0123456789[{tfn" else value
    return options


class LanguageData(pl.LightningDataModule):
    """Builds the loaders once the process group exists, so each rank takes its own slots."""

    def __init__(self, train: dict, val: dict, args: argparse.Namespace, pad_id: int) -> None:
        super().__init__()
        self.train, self.val, self.args, self.pad_id = train, val, args, pad_id

    def train_dataloader(self):
        tau = self.args.temperature
        return build_train_loader(
            self.train,
            self.args.batch_size,
            slots_per_rank=self.args.slots_per_rank,
            probabilities="uniform" if tau == 0 else tau,
            seed=self.args.seed,
            steps_per_epoch=self.args.steps,
            pad_id=self.pad_id,
        )

    def val_dataloader(self):
        return build_val_loader(self.val, self.args.batch_size, pad_id=self.pad_id)


def prepare(args: argparse.Namespace) -> tuple[Tokenizer, Path, dict, dict, LMConfig]:
    """Tokenizer, base checkpoint, and the fine-tuning/validation texts per language."""
    config = LMConfig(max_seq_len=args.seq_len)
    if args.data_dir is not None:
        train, val = holdout_split(load_folder(args.data_dir), 0.1, seed=args.seed)
        tokenizer = train_tokenizer(train, args.cache)
        config = LMConfig(max_seq_len=args.seq_len, vocab_size=tokenizer.vocab_size)
        if args.base_checkpoint is not None:
            base = check_base(args.base_checkpoint, config)
        else:
            base = pretrain_base(
                train,
                tokenizer,
                args.cache,
                config=config,
                steps=args.pretrain_steps,
                seed=args.seed,
            )
        return tokenizer, base, train, val, config
    tokenizer, base = prepare_base(
        args.languages,
        args.cache,
        checkpoint=args.base_checkpoint,
        config=config,
        steps=args.pretrain_steps,
    )
    config = LMConfig(max_seq_len=args.seq_len, vocab_size=tokenizer.vocab_size)
    train = load_bible(args.languages, "finetune")
    val = load_bible(args.languages, "validation", max_verses=args.val_verses)
    return tokenizer, base, train, val, config


def _wandb_logged_in() -> bool:
    """Whether W&B credentials exist, read the way ``wandb login`` stores them.

    wandb itself is not asked: touching its API sets up its global settings before
    WandbLogger can switch it to offline mode.
    """
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_loggers(args: argparse.Namespace, name: str) -> list[Logger]:
    """CSV always (the HTML report reads it); W&B too unless ``--logger csv``."""
    loggers: list[Logger] = [CSVLogger(args.out, name=name, version="")]
    if args.logger == "wandb":
        loggers.append(
            WandbLogger(
                project="lightning_bmoo",
                name=name,
                save_dir=str(args.out),
                offline=not _wandb_logged_in(),
            )
        )
    return loggers


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tunes once; returns the per-language validation results on rank 0 ({} elsewhere)."""
    pl.seed_everything(args.seed, workers=True)
    torch.set_num_threads(1 if args.accelerator == "cpu" else torch.get_num_threads())
    tokenizer, base, train_texts, val_texts, config = prepare(args)
    train = build_datasets(train_texts, tokenizer, args.seq_len)
    val = build_datasets(val_texts, tokenizer, args.seq_len)
    name = args.name or f"{args.aggregator}-{args.granularity}-s{args.seed}"
    model = MultilingualLM(
        config, lr=args.lr, max_steps=args.steps, languages=sorted(val), base_checkpoint=base
    )
    strategy = BucketMOOStrategy(
        aggregator=args.aggregator,
        aggregator_options=_options(args.aggregator_option),
        transport=args.transport,
        granularity=args.granularity,
        seed=args.seed,
        bucket_cap_mb=args.bucket_mb,
    )
    K = args.slots_per_rank
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=strategy,
        accumulate_grad_batches=K,
        use_distributed_sampler=False,
        max_steps=args.steps,
        val_check_interval=min(args.val_every, args.steps) * K,
        check_val_every_n_epoch=None,
        log_every_n_steps=args.monitor_every,
        logger=make_loggers(args, name),
        callbacks=[InterferenceMonitor(args.monitor_every)],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=args.out,
    )
    start = time.perf_counter()
    trainer.fit(model, LanguageData(train, val, args, tokenizer.pad_id))
    if not trainer.is_global_zero:
        return {}
    results = {
        "name": name,
        "seconds": time.perf_counter() - start,
        "val_loss": {lang: float(trainer.callback_metrics[f"val/loss/{lang}"]) for lang in val},
        "val_ppl": {lang: float(trainer.callback_metrics[f"val/ppl/{lang}"]) for lang in val},
        "csv_dir": str(Path(trainer.loggers[0].log_dir)),
        "wandb_dir": next(
            (
                str(Path(lg.experiment.dir).parent)
                for lg in trainer.loggers
                if isinstance(lg, WandbLogger)
            ),
            None,
        ),
    }
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()
    return results


def print_table(results: dict[str, Any]) -> None:
    """The per-language validation table, as markdown."""
    losses, ppl = results["val_loss"], results["val_ppl"]
    print(f"\nValidation after fine-tuning ({results['name']}, {results['seconds']:.0f} s):\n")
    print("| language | loss | perplexity |")
    print("|---|---|---|")
    for lang in sorted(losses):
        print(f"| {lang} | {losses[lang]:.3f} | {ppl[lang]:.1f} |")
    mean = sum(losses.values()) / len(losses)
    worst = max(losses, key=losses.get)
    print(f"| mean | {mean:.3f} | |\n| worst ({worst}) | {losses[worst]:.3f} | |")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the example and, on rank 0, prints the table and writes the report."""
    args = parse_args(argv)
    results = run(args)
    if not results:
        return
    print_table(results)
    out = Path(results["csv_dir"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nLogs (CSV): {out}")
    if results["wandb_dir"]:
        print(f"W&B run: {results['wandb_dir']}  (upload later with `wandb sync` if offline)")
    if not args.no_report:
        from lightning_bmoo.report.__main__ import main as report

        html = out / "report.html"
        report([str(out), "-o", str(html)])
        print(f"Conflict report: {html}")


if __name__ == "__main__":
    main()
