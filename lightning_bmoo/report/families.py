"""The report's sections and the metric families they draw, found in a run's logged keys.

Names, titles, units and meanings come from :mod:`lightning_bmoo.vocabulary`; this module
only says which families go in which section and how to find them among a run's keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import vocabulary as vocab
from ..vocabulary import Metric
from .sources import Run

# Lightning's self.log(..., on_step=True, on_epoch=True) logs "<name>_step" and "<name>_epoch".
_LIGHTNING_SUFFIXES = ("_step", "_epoch")


@dataclass(frozen=True)
class Logged:
    """A vocabulary metric as it appears in logs: under ``prefix`` (the monitor's) or none."""

    metric: Metric
    prefix: str = ""

    @property
    def name(self) -> str:
        """The logged name of a scalar, or the stem of a family (``interference/cos``)."""
        return self.prefix + self.metric.family

    @property
    def pattern(self) -> str:
        """The logged name with placeholders: ``interference/cos/<a>|<b>``."""
        return self.prefix + self.metric.pattern

    def languages_of(self, name: str) -> tuple[str, ...] | None:
        """The languages in a logged name of this family (see ``Metric.languages_of``)."""
        if not name.startswith(self.prefix):
            return None
        return self.metric.languages_of(name[len(self.prefix) :])


def monitor(metric: Metric) -> Logged:
    """``metric`` as ``InterferenceMonitor`` logs it, under its default prefix."""
    return Logged(metric, vocab.MONITOR_PREFIX)


@dataclass(frozen=True)
class Scalar:
    """One value per step; runs are overlaid on one chart."""

    logged: Logged


@dataclass(frozen=True)
class PerLanguage:
    """One value per language per step; one chart per run, side by side on one y scale.

    The first alternative with any logged key wins (the module's ``val/loss/<lang>`` and the
    monitor's ``interference/val_loss/<lang>`` are the same quantity). ``note`` is said under
    the charts.
    """

    alternatives: tuple[Logged, ...]
    note: str = ""


@dataclass(frozen=True)
class Matrix:
    """A pair family per step, drawn as heatmaps (mirrored when the pairs are unordered)."""

    logged: Logged
    unit_range: bool = False  # cosines live on [-1, 1]; other matrices scale to their max |v|


Item = Scalar | PerLanguage | Matrix


@dataclass(frozen=True)
class Section:
    """A titled part of the page: a hint and the families it draws."""

    id: str
    title: str
    blurb: str
    items: tuple[Item, ...]


MGDA_GAIN_NOTE = (
    "Under MGDA the gain lines coincide: its min-norm update d gives every language with a "
    "positive weight the same g_i · d = ‖d_g‖² in each group g, so the sums over groups are "
    "equal unless a language has weight 0 (or no gradient) in some group."
)

M = monitor
SECTIONS: tuple[Section, ...] = (
    Section("losses", "Losses", "Training, validation loss and perplexity per language, and "
            "the module's overall losses.", (
        PerLanguage((M(vocab.LOSS),)),
        PerLanguage((Logged(vocab.MODULE_VAL_LOSS), M(vocab.VAL_LOSS))),
        PerLanguage((Logged(vocab.MODULE_VAL_PPL), M(vocab.VAL_PPL))),
        Scalar(Logged(vocab.TRAIN_LOSS)),
        Scalar(Logged(vocab.VAL_LOSS_MEAN)),
    )),
    Section("conflict", "Gradient conflict", "How often and how strongly the languages' "
            "gradients point against each other, over every (language pair, group); a group "
            "is a bucket or a parameter, whatever the hook solved for. Runs overlaid.", (
        Scalar(M(vocab.CONFLICT_RATE)),
        Scalar(M(vocab.CONFLICT_RATE_WEIGHTED)),
        Scalar(M(vocab.COS_MIN)),
        Scalar(M(vocab.COS_MEAN)),
    )),
    Section("cosine", "Cosine similarity between language gradients", "Red: the two "
            "languages' gradients conflict; blue: they agree. Diagonal is 1 by definition.", (
        Matrix(M(vocab.COS), unit_range=True),
    )),
    Section("affinity", "Inter-language affinity", "Entry (i, j): how a step on language "
            "i's gradient changes language j's loss. Blue helps, red hurts; scale symmetric "
            "about 0. Grey: not logged (the diagonal never is).", (
        Matrix(M(vocab.AFFINITY)),
        Matrix(M(vocab.AFFINITY_EXACT)),
    )),
    Section("weights", "MOO weights", "The weight the aggregator gave each language, and its "
            "spread across groups (plain averaging: the slot shares, spread 0).", (
        PerLanguage((M(vocab.WEIGHT),)),
        PerLanguage((M(vocab.WEIGHT_STD),)),
    )),
    Section("gradients", "Gradients and gains", "g_i is language i's gradient, d the applied "
            "update, g_mean plain averaging's.", (
        PerLanguage((M(vocab.GRAD_NORM),)),
        PerLanguage((M(vocab.GAIN),), note=MGDA_GAIN_NOTE),
        PerLanguage((M(vocab.GAIN_MEAN),)),
    )),
    Section("update", "Update length", "Below 1: the MOO update is shorter than plain "
            "averaging's, which also lowers the effective learning rate.", (
        Scalar(M(vocab.UPDATE_RATIO)),
        Scalar(M(vocab.LENGTH_SCALE)),
        Scalar(M(vocab.FALLBACKS)),
    )),
    Section("comm", "Communication", "Traffic and time of the gradient comm hook, and the "
            "extra memory it held.", (
        Scalar(M(vocab.BYTES_SENT)),
        Scalar(M(vocab.HOOK_MS)),
        Scalar(M(vocab.PEAK_EXTRA_MB)),
    )),
)  # fmt: skip


def natural_key(s: str) -> tuple:
    """Sort "2" before "10" (numbered languages), names alphabetically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s) if p)


def family_keys(run: Run, logged: Logged) -> dict[tuple[str, ...], str]:
    """``{languages: key}`` for every logged key of a per-language or pair family.

    Lightning's ``_step`` / ``_epoch`` suffixes are folded: ``loss`` logged bare beats its
    ``_step`` twin, ``_step`` beats ``_epoch``.
    """
    out: dict[tuple[str, ...], str] = {}
    for key in sorted(run.metric_names()):
        name = next((key[: -len(s)] for s in _LIGHTNING_SUFFIXES if key.endswith(s)), key)
        languages = logged.languages_of(name)
        if languages and (languages not in out or key == name):
            out[languages] = key
    return out


def unreadable_keys(run: Run, logged: Logged) -> list[str]:
    """Keys under a family's prefix that name no language or pair (``cos/de-en``)."""
    stem = logged.name + "/"
    found = set(family_keys(run, logged).values())
    return sorted(k for k in run.metric_names() if k.startswith(stem) and k not in found)


def per_language(run: Run, alternatives: Iterable[Logged]) -> tuple[Logged | None, dict]:
    """The first alternative ``run`` logged, with ``{language: key}``."""
    for logged in alternatives:
        keys = family_keys(run, logged)
        if keys:
            return logged, {langs[0]: key for langs, key in keys.items()}
    return None, {}


def languages(runs: Sequence[Run]) -> list[str]:
    """Every language any per-language family mentions, sorted."""
    langs: set[str] = set()
    for run in runs:
        for section in SECTIONS:
            for item in section.items:
                if isinstance(item, PerLanguage):
                    for logged in item.alternatives:
                        langs.update(lang for (lang,) in family_keys(run, logged))
    return sorted(langs, key=natural_key)


def matrices(run: Run, logged: Logged) -> dict[int, dict[tuple[str, str], float]]:
    """Per step with any entry, ``{(a, b): value}``; unordered pairs mirrored."""
    mirror = logged.metric.kind == "pair"
    out: dict[int, dict[tuple[str, str], float]] = {}
    for (a, b), key in family_keys(run, logged).items():
        for step, v in zip(*run.series(key)):
            cells = out.setdefault(step, {})
            cells[(a, b)] = v
            if mirror:
                cells.setdefault((b, a), v)
    return dict(sorted(out.items()))


def pick_steps(steps: Sequence[int], n: int) -> list[int]:
    """``n`` steps spread evenly from first to last, both included."""
    if len(steps) <= n:
        return list(steps)
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]
