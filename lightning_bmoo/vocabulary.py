"""The package's words: what a language name may be, and every metric's name and meaning.

Every writer of metrics (``callbacks.figures``, ``InterferenceMonitor``, the W&B panels) and
every reader (``bmoo-report``) takes names, titles, units and meanings from here; the docs'
metric tables are checked against it. Kept free of torch and Lightning so that the report and
the command line load it for free.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

#: Language names travel as fixed-width UTF-8 between ranks (see ``comm.layout``).
MAX_LANGUAGE_BYTES = 64

#: Joins the two languages of a pair in metric names (``cos/de|en``). Language names may not
#: contain it, so a pair name always splits back into its two languages (BCP-47 tags such as
#: ``zh-Hans`` contain ``-``; POSIX locales such as ``en_US`` contain ``_``).
PAIR_SEPARATOR = "|"

# "/" would split a metric name into W&B sections; the separator would make pairs ambiguous.
_FORBIDDEN = ("/", PAIR_SEPARATOR)


def check_language_name(language: object) -> str:
    """Returns ``language`` if it is a valid language name, else raises.

    A language name is a non-empty ``str`` of at most 64 UTF-8 bytes, without ``/``, ``|``,
    control characters (NUL included) or surrounding whitespace.

    Raises:
        ValueError: naming the problem and the rule.
    """
    rule = (
        f"a language name must be a non-empty str of at most {MAX_LANGUAGE_BYTES} UTF-8 bytes "
        "without '/', '|', control characters or surrounding whitespace"
    )
    if not isinstance(language, str) or not language:
        raise ValueError(f"Invalid language name {language!r} ({type(language).__name__}): {rule}.")
    size = len(language.encode("utf-8"))
    if size > MAX_LANGUAGE_BYTES:
        raise ValueError(
            f"Language name {language[:20]!r}... is {size} UTF-8 bytes long: {rule}. Use a "
            "short tag such as 'en' or 'zh-Hans'."
        )
    bad = [c for c in language if c in _FORBIDDEN or unicodedata.category(c) == "Cc"]
    if bad or language != language.strip():
        raise ValueError(f"Invalid language name {language!r}: {rule}.")
    return language


def pair_name(a: str, b: str) -> str:
    """``"a|b"``: the metric suffix of a language pair (``cos/a|b``, ``affinity/a|b``)."""
    return f"{a}{PAIR_SEPARATOR}{b}"


def split_pair(name: str) -> tuple[str, str]:
    """Inverse of :func:`pair_name`.

    Raises:
        ValueError: if ``name`` is not a pair name.
    """
    a, sep, b = name.partition(PAIR_SEPARATOR)
    if not sep or not a or not b or PAIR_SEPARATOR in b:
        raise ValueError(f"{name!r} is not a language pair name 'a{PAIR_SEPARATOR}b'.")
    return a, b


# -- metric names --------------------------------------------------------------------------

#: The prefix ``InterferenceMonitor`` puts before its metric names by default.
MONITOR_PREFIX = "interference/"
#: The x axis of every logged metric: Lightning's optimizer-step counter, under this name in
#: W&B (``WandbLogger``) and as ``step`` in CSV logs.
STEP_METRIC = "trainer/global_step"

Kind = Literal["scalar", "language", "pair", "directed pair", "image", "table"]
_PLACEHOLDERS = {"language": "<lang>", "pair": "<a>|<b>", "directed pair": "<i>|<j>"}


@dataclass(frozen=True)
class Metric:
    """One metric family: what it is called, what it measures, how it is shown.

    Attributes:
        family: the name, or the part before ``/<lang>`` or ``/<a>|<b>``.
        kind: ``"scalar"`` (one value per step), ``"language"`` (one per language),
            ``"pair"`` (one per unordered pair ``a < b``), ``"directed pair"`` (one per ordered
            pair ``i != j``), ``"image"`` or ``"table"`` (W&B panels).
        title: short title for charts and panels.
        unit: what its values are counted in (a chart's y label).
        meaning: one line saying what it measures.
        summary: the W&B run-summary aggregates it wants (``"min,last"``), if any.
    """

    family: str
    kind: Kind
    title: str
    unit: str
    meaning: str
    summary: str | None = None

    @property
    def pattern(self) -> str:
        """The name with placeholders, as the docs write it: ``cos/<a>|<b>``, ``loss/<lang>``."""
        placeholder = _PLACEHOLDERS.get(self.kind)
        return f"{self.family}/{placeholder}" if placeholder else self.family

    @property
    def glob(self) -> str:
        """The W&B glob matching every name of the family: ``cos/*``, ``cos_min``."""
        return f"{self.family}/*" if self.kind in _PLACEHOLDERS else self.family

    @property
    def prefix(self) -> str:
        """``family/``: what every name of a per-language or pair family starts with."""
        return f"{self.family}/"

    def key(self, *languages: str) -> str:
        """The metric name for ``languages`` (none, one, or the pair in order).

        Raises:
            ValueError: for the wrong number of languages.
        """
        wanted = {"language": 1, "pair": 2, "directed pair": 2}.get(self.kind, 0)
        if len(languages) != wanted:
            raise ValueError(f"{self.pattern} takes {wanted} language(s), got {languages!r}.")
        if wanted == 2:
            return f"{self.family}/{pair_name(*languages)}"
        return f"{self.family}/{languages[0]}" if wanted else self.family

    def languages_of(self, name: str) -> tuple[str, ...] | None:
        """Inverse of :meth:`key`: the languages in ``name``, or ``None`` if it is not one."""
        if self.kind not in _PLACEHOLDERS:
            return () if name == self.family else None
        if not name.startswith(self.prefix):
            return None
        rest = name[len(self.prefix) :]
        if self.kind == "language":
            return (rest,) if rest and "/" not in rest and PAIR_SEPARATOR not in rest else None
        try:
            return split_pair(rest) if "/" not in rest else None
        except ValueError:
            return None


# InterferenceMonitor's metrics, logged under its prefix. Notation (docs/monitor.md): g_i is
# language i's gradient, d the applied update, g_mean plain averaging's update.
# fmt: off
LOSS = Metric(
    "loss", "language", "Training loss per language", "loss",
    "training loss of the language's microbatches, mean over the interval and the ranks",
    summary="min,last",
)
VAL_LOSS = Metric(
    "val_loss", "language", "Validation loss per language", "loss",
    "validation loss of the language's batches, mean over the ranks",
    summary="min,last",
)
VAL_PPL = Metric(
    "val_ppl", "language", "Validation perplexity per language", "perplexity",
    "exp(val_loss): validation perplexity",
    summary="min,last",
)
COS = Metric(
    "cos", "pair", "Gradient cosine", "cosine",
    "cosine of g_a and g_b over the whole model (a < b)",
    summary="min,last",
)
COS_MIN = Metric(
    "cos_min", "scalar", "Smallest cosine in any group", "cosine",
    "most negative cosine over all (language pair, group)",
    summary="min,last",
)
COS_MEAN = Metric(
    "cos_mean", "scalar", "Mean cosine over groups", "cosine",
    "mean cosine over all (language pair, group)",
    summary="min,last",
)
CONFLICT_RATE = Metric(
    "conflict_rate", "scalar", "Conflict rate", "share of (pair, group)",
    "share of (language pair, group) with a negative cosine",
    summary="max,last",
)
CONFLICT_RATE_WEIGHTED = Metric(
    "conflict_rate_weighted", "scalar", "Conflict rate (size-weighted)", "share of elements",
    "share of (language pair, group) with a negative cosine, each weighted by the group's"
    " number of gradient elements",
    summary="max,last",
)
GRAD_NORM = Metric(
    "grad_norm", "language", "Gradient norm per language", "‖g_i‖",
    "‖g_i‖: the language's gradient norm over the whole model",
)
WEIGHT = Metric(
    "weight", "language", "MOO weight per language", "weight",
    "the aggregator's weight of the language, mean over the groups it is active in",
)
WEIGHT_STD = Metric(
    "weight_std", "language", "Weight spread across groups", "std of weight",
    "population std of that weight over the groups the language is active in",
)
UPDATE_RATIO = Metric(
    "update_ratio", "scalar", "Update length relative to averaging", "‖d‖ / ‖g_mean‖",
    "‖d‖ / ‖g_mean‖: length of the applied update relative to plain averaging's (g_mean ="
    " slot-share-weighted mean gradient)",
)
LENGTH_SCALE = Metric(
    "length_scale", "scalar", "Direction-only stretch", "factor",
    "factor direction_only multiplied the aggregator's update by to give it the mean's "
    "length (numel-weighted mean over groups); 1 without direction_only",
)
FALLBACKS = Metric(
    "fallbacks", "scalar", "Solver fallbacks", "groups per step",
    "groups whose aggregator raised or returned non-finite weights and used the mean of "
    "their languages instead; 0 normally",
    summary="max,last",
)
GAIN = Metric(
    "gain", "language", "Gain per language (applied update)", "g_i · d",
    "g_i · d: first-order decrease of the language's loss per unit learning rate under "
    "the applied update",
    summary="min,last",
)
GAIN_MEAN = Metric(
    "gain_mean", "language", "Gain per language under plain averaging", "g_i · g_mean",
    "g_i · g_mean: the same under plain averaging",
)
AFFINITY = Metric(
    "affinity", "directed pair", "TAG affinity (first order)", "Z_i→j",
    "first-order TAG affinity η g_i · g_j / L_j: relative decrease of j's loss from a "
    "step on i alone",
    summary="min,max,last",
)
AFFINITY_EXACT = Metric(
    "affinity_exact", "directed pair", "TAG affinity (exact lookahead)", "Z_i→j",
    "exact TAG affinity 1 − L_j(θ − η g_i) / L_j(θ), measured every lookahead_every steps",
    summary="min,max,last",
)
BYTES_SENT = Metric(
    "comm/bytes_sent", "scalar", "Bytes sent per step", "bytes",
    "bytes a rank sent inside the hook per step (ring collectives assumed), mean over the"
    " ranks",
    summary="max,mean",
)
HOOK_MS = Metric(
    "comm/hook_ms", "scalar", "Hook time per step", "ms",
    "wall time spent inside the hook per step, mean over the ranks",
    summary="max,mean",
)
PEAK_EXTRA_MB = Metric(
    "comm/peak_extra_mb", "scalar", "Peak extra memory", "MiB",
    "most gradient-sized memory (MiB) the hook held at once beyond DDP's own buckets, "
    "mean over the ranks",
    summary="max,mean",
)
# W&B panels (rank 0, with a WandbLogger).
COS_HEATMAP = Metric(
    "cos_heatmap", "image", "Gradient cosine (whole model)", "cosine",
    "languages × languages heatmap of the interval-mean whole-model cosines",
)
AFFINITY_HEATMAP = Metric(
    "affinity_heatmap", "image", "TAG affinity i → j (row helps column)", "Z_i→j",
    "heatmap of the first-order affinities: row i helps (blue) or hurts (red) column j",
)
GROUP_COS_HEATMAP = Metric(
    "group_cos_heatmap", "image", "Cosine per group", "cosine",
    "cosine per group and language pair at the logging step, for the groups with a "
    "negative cosine (up to 40, most conflicting first): where in the model the conflict "
    "lives",
)
CONFLICTS = Metric(
    "conflicts", "table", "Most conflicting groups", "cosine",
    "the interval's top_k groups whose worst language pair has a negative cosine, most "
    "negative first; step is the trainer's global step; empty when no group conflicts",
)
WORST_GROUP = Metric(
    "worst_group", "table", "Most conflicting group", "cosine",
    "the first row of conflicts (empty when no group conflicts)",
)
# fmt: on

#: Columns of the ``conflicts`` and ``worst_group`` tables. ``step`` is the trainer's global
#: step, the x axis of every chart.
CONFLICT_COLUMNS = ("step", "group", "parameters", "pair", "cosine", "numel")

# The user's LightningModule logs these itself (the example does); the report reads them.
TRAIN_LOSS = Metric(
    "train/loss",
    "scalar",
    "Training loss (all languages)",
    "loss",
    "the module's training loss over all languages",
)
VAL_LOSS_MEAN = Metric(
    "val/loss",
    "scalar",
    "Validation loss (mean over languages)",
    "loss",
    "the module's validation loss over all languages",
)
MODULE_VAL_LOSS = Metric(
    "val/loss",
    "language",
    VAL_LOSS.title,
    VAL_LOSS.unit,
    "the module's validation loss of the language",
)
MODULE_VAL_PPL = Metric(
    "val/ppl",
    "language",
    VAL_PPL.title,
    VAL_PPL.unit,
    "the module's validation perplexity of the language",
)

#: What ``InterferenceMonitor`` logs as scalars, under its prefix, in the docs' order.
MONITOR_METRICS = (
    LOSS,
    VAL_LOSS,
    VAL_PPL,
    COS,
    COS_MIN,
    COS_MEAN,
    CONFLICT_RATE,
    CONFLICT_RATE_WEIGHTED,
    GRAD_NORM,
    WEIGHT,
    WEIGHT_STD,
    UPDATE_RATIO,
    LENGTH_SCALE,
    FALLBACKS,
    GAIN,
    GAIN_MEAN,
    AFFINITY,
    AFFINITY_EXACT,
    BYTES_SENT,
    HOOK_MS,
    PEAK_EXTRA_MB,
)
#: The heatmaps and tables it logs to W&B, under its prefix.
WANDB_PANELS = (COS_HEATMAP, AFFINITY_HEATMAP, GROUP_COS_HEATMAP, CONFLICTS, WORST_GROUP)
#: The module's own metrics that the report understands (no prefix).
MODULE_METRICS = (TRAIN_LOSS, VAL_LOSS_MEAN, MODULE_VAL_LOSS, MODULE_VAL_PPL)
