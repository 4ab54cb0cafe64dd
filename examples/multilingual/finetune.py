"""Multilingual fine-tuning with bucket-level MOO: the package's main example.

Stages, all offline, each announced on one line:

1. data: the public-domain Bible extract shipped in ``bible/`` (or ``--data-dir``);
2. base model: a SentencePiece tokenizer (as a Hugging Face tokenizer) and a small
   ``transformers`` Llama pretrained on the Old Testament of every language, each trained once
   and cached; or your own local Hugging Face model with its tokenizer (``--hf-model``);
3. fine-tuning on the New Testament, of every weight or of LoRA adapters (``--adapters``: one
   shared, or one per language), with ``BucketMOOStrategy`` + ``LanguageBatchSampler`` +
   ``InterferenceMonitor`` on ``--devices`` CPU processes over gloo (or GPUs over NCCL),
   logged to CSV and W&B (offline unless you are logged in), with a progress bar in optimizer
   steps;
4. a per-language validation table (before and after fine-tuning), an HTML conflict report,
   and the trained model or adapters, saved with ``save_pretrained``.

Every run writes into a new folder ``--out/NAME/version_N``; nothing of an earlier run is
touched. ``python -m examples.multilingual.finetune --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import netrc
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from lightning_bmoo import BucketMOOStrategy
from lightning_bmoo.callbacks import InterferenceMonitor, StepProgressBar

from .cli import DEFAULT_LANGUAGES, UsageError, build_parser, parse_args
from .data import build_datasets, build_train_loader, build_val_loader
from .finetuned import build_model, describe_saved, describe_trainable, save_trained
from .model import MultilingualLM
from .pretrain import prepare_base
from .quiet import silence_known_noise
from .texts import holdout_split, load_bible, load_folder
from .tokenizer import Tokenizer

#: The run folder chosen by the launching process, inherited by the DDP ranks it starts.
RUN_DIR_ENV = "LIGHTNING_BMOO_EXAMPLE_RUN_DIR"


@rank_zero_only
def say(message: str) -> None:
    """Prints a stage line, once (on rank 0)."""
    print(message, flush=True)


def run_name(args: argparse.Namespace) -> str:
    """``--name``, or one that tells runs apart: aggregator, granularity, data, adapters, steps,
    seed."""
    if args.name:
        return args.name
    if args.data_dir is not None:
        data = args.data_dir.resolve().name
    else:
        data = "bible-" + "+".join(sorted(args.languages or DEFAULT_LANGUAGES))
    lora = "" if args.adapters == "none" else f"-lora_{args.adapters}"
    return f"{args.aggregator}-{args.granularity}-{data}{lora}-{args.steps}steps-s{args.seed}"


def claim_run_dir(out: Path, name: str) -> Path:
    """Creates ``out/name/version_N`` with the first free N; two runs never share a folder."""
    parent = out / name
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()  # atomic: a concurrent run gets another N
            return (parent / f"version_{n}").resolve()
        except FileExistsError:
            n += 1


class LanguageData(pl.LightningDataModule):
    """Builds the loaders once the process group exists, so each rank takes its own slots."""

    def __init__(self, train: dict, val: dict, args: argparse.Namespace, pad_id: int) -> None:
        super().__init__()
        self.train, self.val, self.args, self.pad_id = train, val, args, pad_id

    def train_dataloader(
        self, rank: int | None = None, world_size: int | None = None
    ) -> DataLoader:
        return build_train_loader(
            self.train,
            self.args.batch_size,
            slots_per_rank=self.args.slots_per_rank,
            rank=rank,
            world_size=world_size,
            probabilities="uniform" if self.args.temperature == 0 else self.args.temperature,
            seed=self.args.seed,
            steps_per_epoch=self.args.steps,
            coverage=self.args.coverage,
            drop_last=self.args.drop_last,
            pad_id=self.pad_id,
        )

    def val_dataloader(self) -> DataLoader:
        return build_val_loader(self.val, self.args.batch_size, pad_id=self.pad_id)


def load_texts(
    args: argparse.Namespace,
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """``(pretraining, fine-tuning, validation)`` texts per language.

    Raises:
        UsageError: naming ``--data-dir`` or ``--languages`` when the data cannot serve.
    """
    if args.data_dir is None:
        languages = args.languages or DEFAULT_LANGUAGES
        pretrain = load_bible(languages, "pretrain")
        train = load_bible(languages, "finetune")
        val = load_bible(languages, "validation", max_verses=args.val_verses)
        say(
            f"data: Bible, {len(languages)} languages ({' '.join(languages)}): "
            f"{len(train[languages[0]]):,} fine-tuning and {len(val[languages[0]])} validation "
            "verses each"
        )
        return pretrain, train, val
    try:
        texts = load_folder(args.data_dir)
    except (OSError, ValueError) as err:
        raise UsageError("--data-dir", str(err)) from None
    if args.languages is not None:
        missing = sorted(set(args.languages) - set(texts))
        if missing:
            raise UsageError(
                "--languages", f"{missing} have no file in {args.data_dir} (it has {sorted(texts)})"
            )
        texts = {lang: texts[lang] for lang in args.languages}
    try:
        train, val = holdout_split(texts, 0.1, seed=args.seed)
    except ValueError as err:
        raise UsageError("--data-dir", str(err)) from None
    say(
        f"data: {args.data_dir}, {len(texts)} languages: "
        + ", ".join(f"{lang} {len(train[lang]):,}+{len(val[lang]):,}" for lang in sorted(texts))
        + " examples (fine-tuning+validation)"
    )
    return train, train, val


def check_schedule(data: LanguageData, args: argparse.Namespace) -> None:
    """Builds rank 0's training loader once, so that data too small to fill a step fails here.

    Raises:
        UsageError: naming ``--batch-size`` with the sampler's reason.
    """
    try:
        data.train_dataloader(rank=0, world_size=args.devices)
    except ValueError as err:
        raise UsageError("--batch-size", str(err)) from None


@torch.no_grad()
def evaluate(
    model: MultilingualLM, datasets: Mapping[str, Dataset], batch_size: int
) -> dict[str, float]:
    """Token-weighted validation loss per language, in this process (the base model's)."""
    model.eval()
    losses = {}
    for lang, dataset in sorted(datasets.items()):
        total = tokens = 0.0
        for batch in DataLoader(dataset, batch_size=batch_size):
            loss_sum, count = model.loss_sum(batch["input_ids"], lang)
            total, tokens = total + float(loss_sum), tokens + float(count)
        losses[lang] = total / max(tokens, 1.0)
    model.train()
    return losses


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


def make_loggers(args: argparse.Namespace, run_dir: Path, name: str) -> list[Logger]:
    """CSV in ``run_dir/csv`` (the HTML report reads it); W&B in ``run_dir/wandb`` unless
    ``--logger csv``.

    The CSV logs get their own folder because Lightning starts W&B first, and the CSV logger
    warns about (and deletes) earlier files in a folder it finds not empty.
    """
    loggers: list[Logger] = [CSVLogger(run_dir, name="", version="csv")]
    if args.logger == "wandb":
        wandb_logger = WandbLogger(
            project="lightning_bmoo",
            name=f"{name}/{run_dir.name}",
            save_dir=str(run_dir),
            offline=not _wandb_logged_in(),
        )
        # Lightning always passes anonymous=None, which wandb 0.31 warns is deprecated.
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def prepare(args: argparse.Namespace) -> tuple[Path, Tokenizer, LanguageData]:
    """Data, tokenizer, base model folder and datasets; every problem found here names its option.

    Raises:
        UsageError: for data or a model folder that cannot serve.
    """
    pretrain_texts, train_texts, val_texts = load_texts(args)
    if args.hf_model is not None:
        base = args.hf_model.resolve()
        try:
            tokenizer = Tokenizer.from_pretrained(base)
        except ValueError as err:
            raise UsageError("--hf-model", str(err)) from None
        say(f"base model: {base}, tokenizer vocabulary {tokenizer.vocab_size}")
    else:
        try:
            tokenizer, base = prepare_base(
                pretrain_texts,
                args.cache,
                seq_len=args.seq_len,
                steps=args.pretrain_steps,
                seed=args.seed,
                say=say if rank_zero_only.rank == 0 else None,
            )
        except ValueError as err:
            raise UsageError("--data-dir", str(err)) from None
    data = LanguageData(
        build_datasets(train_texts, tokenizer, args.seq_len),
        build_datasets(val_texts, tokenizer, args.seq_len),
        args,
        tokenizer.pad_id,
    )
    check_schedule(data, args)
    return base, tokenizer, data


def run(args: argparse.Namespace, run_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tunes once, into ``run_dir`` (default: a new folder, or the launcher's); returns
    the results on rank 0 ({} on the other ranks).

    Raises:
        UsageError: for data or files that cannot serve, before any training.
    """
    pl.seed_everything(args.seed, workers=True, verbose=False)
    torch.set_num_threads(1 if args.accelerator == "cpu" else torch.get_num_threads())
    base, tokenizer, data = prepare(args)
    val = data.val
    model = build_model(args, base, tokenizer, sorted(val))
    name = run_name(args)
    inherited = os.environ.get(RUN_DIR_ENV) if run_dir is None else None
    if run_dir is None:
        run_dir = Path(inherited) if inherited else claim_run_dir(args.out, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    before = evaluate(model, val, args.batch_size) if rank_zero_only.rank == 0 else {}
    strategy = BucketMOOStrategy(
        aggregator=args.aggregator,
        aggregator_options=dict(args.aggregator_option),
        transport=args.transport,
        granularity=args.granularity,
        direction_only=args.direction_only,
        seed=args.seed,
        bucket_cap_mb=args.bucket_mb,
        # Each step uses the adapters of its languages only: DDP must expect unused ones.
        find_unused_parameters=args.adapters == "per-language",
    )
    K = args.slots_per_rank
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=strategy,
        accumulate_grad_batches=K,
        use_distributed_sampler=False,
        precision=args.precision,
        max_steps=args.steps,
        val_check_interval=min(args.val_every, args.steps) * K,
        check_val_every_n_epoch=None,
        log_every_n_steps=args.monitor_every,
        logger=make_loggers(args, run_dir, name),
        callbacks=[InterferenceMonitor(args.monitor_every), StepProgressBar("fine-tuning")],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
    )
    say(
        f"fine-tuning: {args.steps} steps of {args.devices} x {K} microbatches of "
        f"{args.batch_size} sequences, {args.aggregator} per {args.granularity} "
        f"({args.transport}), {describe_trainable(model, args.adapters)}, into {run_dir}"
    )
    start = time.perf_counter()
    # The ranks Lightning starts run this script again: they must write into the same folder.
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        trainer.fit(model, data)
    finally:
        if not inherited:
            os.environ.pop(RUN_DIR_ENV, None)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}
    saved = save_trained(model, tokenizer, run_dir, args.adapters)
    results = {
        "name": name,
        "run_dir": str(run_dir),
        "aggregator": args.aggregator,
        "granularity": args.granularity,
        "direction_only": args.direction_only,
        "adapters": args.adapters,
        "base_model": str(base),
        "saved": str(saved),
        "steps": args.steps,
        "seconds": seconds,
        "val_loss_before": before,
        "val_loss": {lang: float(trainer.callback_metrics[f"val/loss/{lang}"]) for lang in val},
        "val_ppl": {lang: float(trainer.callback_metrics[f"val/ppl/{lang}"]) for lang in val},
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


def print_table(results: Mapping[str, Any]) -> None:
    """The per-language validation table, as markdown, with what its numbers mean."""
    before, after = results["val_loss_before"], results["val_loss"]
    method = (
        "plain averaging (mean)"
        if results["aggregator"] == "mean"
        else f"{results['aggregator']} per {results['granularity']}"
    )
    print(
        f"\nValidation loss per language: cross-entropy per token on held-out text, lower is "
        f"better (perplexity = e^loss).\nbefore: the base model; after: {results['steps']} "
        f"steps of fine-tuning with {method} ({results['seconds']:.0f} s).\n"
    )
    print("| language | before | after | change | perplexity after |")
    print("|---|---|---|---|---|")
    for lang in sorted(after):
        change = after[lang] - before[lang]
        print(
            f"| {lang} | {before[lang]:.3f} | {after[lang]:.3f} | {change:+.3f} | "
            f"{results['val_ppl'][lang]:.1f} |"
        )
    mean_b, mean_a = (sum(d.values()) / len(d) for d in (before, after))
    worst = max(after, key=after.get)
    print(f"| mean | {mean_b:.3f} | {mean_a:.3f} | {mean_a - mean_b:+.3f} | |")
    print(f"| worst after ({worst}) | {before[worst]:.3f} | {after[worst]:.3f} | | |")
    if results["aggregator"] != "mean" and "baseline" not in results:
        print(
            "\n'change' is what this fine-tuning did, not what MOO adds: this run has no "
            "plain-averaging baseline. Add --baseline to fine-tune once more with plain "
            "averaging and compare (benchmarks/evidence does so over seeds and learning rates)."
        )


def baseline_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with plain averaging instead of the aggregator, everything else equal."""
    changed = {"aggregator": "mean", "aggregator_option": [], "direction_only": False}
    return argparse.Namespace(**{**vars(args), **changed, "name": f"{run_name(args)}-baseline"})


def print_comparison(results: Mapping[str, Any], baseline: Mapping[str, Any]) -> None:
    """The per-language difference between this run and its plain-averaging baseline."""
    ours, mean = results["val_loss"], baseline["val_loss"]
    method = f"{results['aggregator']} per {results['granularity']}"
    if results["direction_only"]:
        method += ", direction only"
    print(
        f"\nAgainst plain averaging (the same command with --aggregator mean, into "
        f"{baseline['run_dir']}): validation loss, lower is better; difference = {method} "
        "minus mean, negative where MOO helped.\n"
    )
    print(f"| language | mean | {method} | difference |")
    print("|---|---|---|---|")
    for lang in sorted(ours):
        print(f"| {lang} | {mean[lang]:.3f} | {ours[lang]:.3f} | {ours[lang] - mean[lang]:+.3f} |")
    avg_m, avg_o = (sum(d.values()) / len(d) for d in (mean, ours))
    worst_m, worst_o = max(mean.values()), max(ours.values())
    print(f"| mean over languages | {avg_m:.3f} | {avg_o:.3f} | {avg_o - avg_m:+.3f} |")
    print(f"| worst language | {worst_m:.3f} | {worst_o:.3f} | {worst_o - worst_m:+.3f} |")
    print(
        "\nOne seed at one learning rate: differences of a few thousandths are within "
        "seed-to-seed noise (docs/evidence.md measured a spread of about 0.003-0.01). Repeat "
        "with other --seed values before trusting a sign."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the example and, on rank 0, prints the table and writes the results and report."""
    args = parse_args(argv)
    silence_known_noise()
    try:
        results = run(args)
    except UsageError as err:
        build_parser().error(str(err))
    baseline: dict[str, Any] = {}
    if args.baseline:
        # Every rank runs this (the ranks Lightning started run main() too); the launcher's
        # run folder reaches them through the environment.
        run_dir = Path(results["run_dir"] if results else os.environ[RUN_DIR_ENV])
        baseline = run(baseline_args(args), run_dir / "baseline")
    if not results:
        return
    if baseline:
        results["baseline"] = {k: baseline[k] for k in ("run_dir", "val_loss", "val_ppl")}
        (Path(baseline["run_dir"]) / "results.json").write_text(json.dumps(baseline, indent=2))
    print_table(results)
    if baseline:
        print_comparison(results, baseline)
    run_dir = Path(results["run_dir"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nrun folder: {run_dir}\n  results.json; CSV logs in csv/")
    print("  " + describe_saved(Path(results["saved"]), results["adapters"], results["base_model"]))
    if results["wandb_dir"]:
        print(f"  W&B run: {results['wandb_dir']} (upload later with `wandb sync` if offline)")
    if not args.no_report:
        from lightning_bmoo.report.cli import main as report

        html = run_dir / "report.html"
        report([str(run_dir / "csv"), "-l", results["name"], "-o", str(html)])


if __name__ == "__main__":
    main()
