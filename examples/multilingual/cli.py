"""The fine-tuning example's command line: every option, checked before anything runs.

Mistakes end in one line that names the option, with exit status 2 (argparse's convention):
ranges and choices in the parser, then the data and files in :func:`check_args`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning_bmoo import available_aggregators
from lightning_bmoo.comm import GRANULARITIES, TRANSPORTS, HookOptions

from .model import ADAPTERS
from .texts import BIBLE_TRANSLATIONS

PROG = "python -m examples.multilingual.finetune"
DEFAULT_LANGUAGES = ["ar", "de", "en", "fa", "fr", "ru"]


class UsageError(ValueError):
    """A bad option found after parsing (in the data or a file); ``flag`` names the option."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")
        self.flag = flag


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem, then where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` unless there is no default value to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        no_value = action.default is None or action.default is False  # 0 is a value
        if no_value or "(default: " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if math.isnan(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {noun} >= {minimum}, got {text}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = _at_least(0.0, float)(text)
    if value == 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, lists
    except json.JSONDecodeError:
        return key, value  # a plain string


def build_parser() -> argparse.ArgumentParser:
    """The parser of :func:`parse_args` (exposed for ``--help`` and tests)."""
    p = _Parser(
        prog=PROG,
        description="Multilingual fine-tuning with bucket-level MOO (lightning_bmoo): a base "
        "model pretrained once (cached) or your Hugging Face model, fine-tuned (every weight or "
        "LoRA adapters) with BucketMOOStrategy on --devices processes, then a per-language "
        "validation table, an HTML conflict report and the trained model, saved with "
        "save_pretrained.",
        formatter_class=_Help,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--languages",
        nargs="+",
        metavar="LANG",
        help=f"Bible languages, from {' '.join(BIBLE_TRANSLATIONS)} (default: "
        f"{' '.join(DEFAULT_LANGUAGES)}); with --data-dir, a subset of its files (default: all)",
    )
    data.add_argument(
        "--data-dir",
        type=Path,
        help="your own data instead of the Bible: one <lang>.txt (an example per line) or "
        "<lang>.jsonl ('text' field) per language; a tenth is held out for validation",
    )
    data.add_argument(
        "--val-verses",
        type=_at_least(1),
        default=200,
        help="Bible validation verses per language",
    )
    data.add_argument("--seq-len", type=_at_least(2), default=128, help="tokens per sequence")
    moo = p.add_argument_group("bucket-level MOO")
    moo.add_argument(
        "--aggregator",
        default="upgrad",
        choices=available_aggregators(),
        help="how each bucket's per-language gradients are combined; 'mean' is plain DDP "
        "averaging. upgrad: the only method that beat tuned averaging in docs/evidence.md",
    )
    moo.add_argument(
        "--aggregator-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an aggregator option, e.g. c=0.5 for cagrad; repeatable (default: none)",
    )
    moo.add_argument(
        "--transport", default="sharded", choices=list(TRANSPORTS), help="gradient exchange"
    )
    moo.add_argument(
        "--granularity",
        default="bucket",
        choices=list(GRANULARITIES),
        help="one MOO solve per DDP bucket, per parameter tensor, or for the whole model",
    )
    moo.add_argument(
        "--direction-only",
        action="store_true",
        help="rescale each group's update to the length of plain averaging's: the aggregator "
        "chooses the direction only, so any difference is not a step-size change",
    )
    moo.add_argument("--bucket-mb", type=_positive_float, default=0.5, help="DDP bucket size (MB)")
    moo.add_argument(
        "--baseline",
        action="store_true",
        help="then fine-tune again with plain averaging (--aggregator mean, all else equal, "
        "into RUN/baseline) and print the per-language difference: does MOO help on your data?",
    )
    sampling = p.add_argument_group("language sampling")
    sampling.add_argument(
        "--temperature",
        type=_at_least(0.0, float),
        default=0.0,
        help="sampling temperature tau, p ~ n^(1/tau); 0 is uniform. When every step holds "
        "each language once (6 languages in 2 x 3 slots) tau changes nothing; it matters "
        "with more languages than slots, or with --no-coverage",
    )
    sampling.add_argument(
        "--coverage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fill each step with as many distinct languages as it has slots (shares then "
        "follow the temperature only as far as that allows)",
    )
    sampling.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="only full batches (a language with fewer sequences than --batch-size is left "
        "out, with a warning)",
    )
    train = p.add_argument_group("training")
    train.add_argument(
        "--steps", type=_at_least(1), default=150, help="fine-tuning optimizer steps"
    )
    train.add_argument("--devices", type=_at_least(1), default=2, help="processes (CPU) or GPUs")
    train.add_argument(
        "--accelerator", default="cpu", choices=["cpu", "gpu", "auto"], help="device type"
    )
    train.add_argument(
        "--slots-per-rank",
        type=_at_least(1),
        default=3,
        help="K: language-homogeneous microbatches per rank per step",
    )
    train.add_argument(
        "--batch-size", type=_at_least(1), default=8, help="sequences per microbatch"
    )
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate")
    train.add_argument("--seed", type=_at_least(0), default=0, help="seed of everything")
    train.add_argument(
        "--val-every", type=_at_least(1), default=50, help="validate every N optimizer steps"
    )
    base = p.add_argument_group("base model")
    base.add_argument(
        "--hf-model",
        type=Path,
        metavar="DIR",
        help="fine-tune this local Hugging Face causal LM (a folder with config.json, weights "
        "and tokenizer, as save_pretrained writes it; never downloaded) instead of pretraining "
        "one",
    )
    base.add_argument(
        "--pretrain-steps",
        type=_at_least(1),
        default=300,
        help="steps of the base model's pretraining, run once and cached (not --steps)",
    )
    base.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/lightning_bmoo"),
        help="tokenizer and base model cache",
    )
    tuning = p.add_argument_group("what is trained")
    tuning.add_argument(
        "--adapters",
        default="none",
        choices=list(ADAPTERS),
        help="none: every weight; shared: one LoRA adapter for all languages (bucket MOO over "
        "its parameters); per-language: one LoRA adapter per language, chosen by each "
        "microbatch's language (the base is frozen in both)",
    )
    tuning.add_argument("--lora-rank", type=_at_least(1), default=8, help="LoRA rank r (alpha 2r)")
    tuning.add_argument(
        "--lora-targets",
        nargs="+",
        metavar="MODULE",
        help="module names LoRA adapts, e.g. q_proj v_proj (default: peft's for the model type)",
    )
    tuning.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, about a third slower",
    )
    tuning.add_argument(
        "--precision",
        default="32-true",
        choices=["32-true", "bf16-mixed", "16-mixed"],
        help="Lightning's precision; 16-mixed brings a GradScaler on GPUs",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="each run gets a new folder OUT/NAME/version_N: logs, results.json, report.html",
    )
    out.add_argument(
        "--name",
        help="NAME of the run (default: aggregator, granularity, data, steps and seed)",
    )
    out.add_argument(
        "--logger",
        default="wandb",
        choices=["wandb", "csv"],
        help="wandb also writes CSV; W&B runs offline unless you are logged in",
    )
    out.add_argument(
        "--monitor-every",
        type=_at_least(1),
        default=10,
        help="interference logging interval (optimizer steps)",
    )
    out.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and checks the command line; on a mistake prints one line and exits with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as err:
        parser.error(str(err))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Checks what the parser cannot: options against each other, files, names.

    Raises:
        UsageError: naming the option.
    """
    if args.languages is not None:
        if len(set(args.languages)) != len(args.languages):
            raise UsageError("--languages", f"a language is listed twice: {args.languages}")
        if args.data_dir is None:
            unknown = [lang for lang in args.languages if lang not in BIBLE_TRANSLATIONS]
            if unknown:
                raise UsageError(
                    "--languages",
                    f"no public-domain Bible for {unknown}; choose from "
                    f"{' '.join(BIBLE_TRANSLATIONS)}, or pass your own text with --data-dir",
                )
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError("--data-dir", f"{args.data_dir} is not a folder")
    if args.hf_model is not None and not (args.hf_model / "config.json").is_file():
        raise UsageError(
            "--hf-model",
            f"{args.hf_model} is no Hugging Face model folder (no config.json); pass the folder "
            "save_pretrained wrote",
        )
    for flag in ("--out", "--cache"):
        path = getattr(args, flag[2:])
        if path.exists() and not path.is_dir():
            raise UsageError(flag, f"{path} exists and is not a folder")
    name = args.name
    if name is not None and (
        name in ("", ".", "..")
        or name != name.strip()
        or any(c in "/\\" or not c.isprintable() for c in name)
    ):
        raise UsageError("--name", f"{name!r} cannot name a folder (no slashes, no blanks around)")
    try:
        HookOptions.build(
            args.aggregator,
            dict(args.aggregator_option),
            transport=args.transport,
            granularity=args.granularity,
            direction_only=args.direction_only,
        )
    except (TypeError, ValueError) as err:
        raise UsageError("--aggregator-option", str(err)) from None
    if args.baseline and args.aggregator == "mean":
        raise UsageError("--baseline", "--aggregator mean is the baseline itself; choose another")
