"""Interference figures of one step, computed from the Gramians the hook records.

Every figure comes from the per-group Gramians ``M_g`` (``T x T``, raw-gradient units) and
weights ``w_g`` of a :class:`~lightning_bmoo.comm.StepStats`: with ``g_i`` the gradient of
language ``i`` and ``d = sum_t w_t g_t`` the update, ``g_i . g_j = sum_g M_g[i, j]``,
``g_i . d = sum_g (M_g w_g)_i`` and ``|d|^2 = sum_g w_g^T M_g w_g``. No gradient is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import vocabulary as vocab
from ..comm.stats import StepStats


@dataclass(frozen=True)
class GroupConflict:
    """The most conflicting language pair of one group (bucket or parameter): negative cosine.

    Attributes:
        key: the group's key (``StepStats.groups[i].key``).
        param_names: the group's parameters.
        pair: the two languages, sorted.
        cosine: their gradients' cosine in this group (< 0).
        numel: gradient elements of the group.
        step: the step it was measured at (see :func:`interference`).
    """

    key: str
    param_names: tuple[str, ...]
    pair: tuple[str, str]
    cosine: float
    numel: int
    step: int


@dataclass
class Interference:
    """Interference figures of one step; rows and columns follow ``tasks``.

    Attributes:
        step: the step it was measured at (see :func:`interference`).
        tasks: the step's languages, sorted.
        dot: whole-model Gramian ``g_i . g_j``.
        cos: whole-model cosines (NaN where a gradient is zero).
        group_cos: ``G x T x T`` per-group cosines, NaN where a language is inactive.
        group_keys: each group's key.
        group_numel: elements of each group.
        grad_norm: ``|g_i|`` over the whole model.
        weight: each language's weight, averaged over the groups it is active in.
        weight_std: the spread (population std) of those weights over the groups.
        gain: ``g_i . d``, the first-order loss decrease of language ``i`` per unit of
            learning rate under the applied update.
        gain_mean: ``g_i . g_mean`` for plain data-parallel averaging (every slot weighs the
            same, ``g_mean = sum_t (slots_t / slots) g_t``).
        update_norm: ``|d|``.
        mean_norm: ``|g_mean|``.
        cos_min: most negative cosine over (pair, group).
        cos_mean: mean cosine over (pair, group).
        conflict_rate: share of (pair, group) with a negative cosine.
        conflict_rate_weighted: the same share weighted by the groups' numbers of elements.
        conflicts: each group's most conflicting pair if its cosine is negative, most
            negative first.
        length_scale: the factor ``direction_only`` applied to the aggregator's update,
            mean over groups weighted by their elements (1.0 when off).
        fallbacks: solves that fell back to the mean because the aggregator failed.
    """

    step: int
    tasks: list[str]
    dot: Tensor
    cos: Tensor
    group_cos: Tensor
    group_keys: list[str]
    group_numel: Tensor
    grad_norm: Tensor
    weight: Tensor
    weight_std: Tensor
    gain: Tensor
    gain_mean: Tensor
    update_norm: float
    mean_norm: float
    cos_min: float
    cos_mean: float
    conflict_rate: float
    conflict_rate_weighted: float
    conflicts: list[GroupConflict] = field(default_factory=list)
    length_scale: float = 1.0
    fallbacks: int = 0

    @property
    def update_ratio(self) -> float:
        """``|d| / |g_mean|``: how much longer the MOO update is than plain averaging's."""
        return self.update_norm / self.mean_norm if self.mean_norm > 0 else math.nan


def cosines(gramian: Tensor, valid: Tensor | None = None) -> Tensor:
    """Cosine matrix of a Gramian; NaN where a diagonal entry is zero, non-finite or invalid.

    Args:
        gramian: ``(..., T, T)`` Gramian.
        valid: optional ``(..., T)`` mask of the rows to keep.
    """
    diag = gramian.diagonal(dim1=-2, dim2=-1)
    ok = torch.isfinite(diag) & (diag > 0)
    if valid is not None:
        ok = ok & valid
    norm = diag.clamp(min=0).sqrt()
    cos = gramian / (norm.unsqueeze(-1) * norm.unsqueeze(-2))
    keep = ok.unsqueeze(-1) & ok.unsqueeze(-2)
    return torch.where(keep & torch.isfinite(cos), cos.clamp(-1.0, 1.0), math.nan)


def slot_shares(stats: StepStats) -> Tensor:
    """Each task's share of the step's slots: plain data parallelism's weights."""
    counts = torch.tensor([stats.slots.count(t) for t in stats.tasks], dtype=torch.float64)
    return counts / counts.sum()


def interference(stats: StepStats, step: int | None = None) -> Interference:
    """Computes every interference figure of one step.

    Args:
        stats: the step's statistics (``BucketMOOState.last_step``).
        step: the step to label the figures with. Default: the hook's 0-based count
            ``stats.step``; ``InterferenceMonitor`` passes the trainer's global step, the x axis
            its logs use (one ahead of the hook's count once the optimizer has stepped).

    Raises:
        ValueError: if the step recorded no group.
    """
    if not stats.groups:
        raise ValueError(f"Step {stats.step} recorded no group: nothing to measure.")
    tasks = list(stats.tasks)
    T = len(tasks)
    # One conversion per stack, not per group: hundreds of groups at T = 16 every step.
    raw = torch.stack([g.gramian for g in stats.groups]).to(torch.float64)  # G x T x T
    grams = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    weights = torch.stack([g.weights for g in stats.groups]).to(torch.float64)  # G x T
    active = torch.stack([g.active for g in stats.groups]).to(torch.bool)  # G x T
    numel = torch.tensor([g.numel for g in stats.groups], dtype=torch.float64)

    dot = grams.sum(0)
    applied = torch.einsum("gij,gj->gi", grams, weights)  # (M_g w_g)_i
    mean_w = slot_shares(stats)
    mean_applied = dot @ mean_w
    update_sq = float((weights * applied).sum())
    mean_sq = float(mean_w @ mean_applied)

    group_cos = cosines(raw, active)
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    pair_cos = group_cos[:, upper]  # G x pairs
    defined = ~torch.isnan(pair_cos)
    values = pair_cos[defined]
    pair_numel = numel.unsqueeze(1).expand_as(pair_cos)[defined]
    negative = (values < 0).to(torch.float64)

    count = active.sum(0).clamp(min=1).to(torch.float64)
    masked = torch.where(active, weights, 0.0)
    weight = masked.sum(0) / count
    spread = torch.where(active, (weights - weight).square(), 0.0).sum(0) / count
    never = ~active.any(0)

    step = stats.step if step is None else step
    return Interference(
        step=step,
        tasks=tasks,
        dot=dot,
        cos=cosines(dot),
        group_cos=group_cos,
        group_keys=[g.key for g in stats.groups],
        group_numel=numel,
        grad_norm=dot.diagonal().clamp(min=0).sqrt(),
        weight=torch.where(never, math.nan, weight),
        weight_std=torch.where(never, math.nan, spread.sqrt()),
        gain=applied.sum(0),
        gain_mean=mean_applied,
        update_norm=math.sqrt(max(update_sq, 0.0)),
        mean_norm=math.sqrt(max(mean_sq, 0.0)),
        cos_min=float(values.min()) if values.numel() else math.nan,
        cos_mean=float(values.mean()) if values.numel() else math.nan,
        conflict_rate=float(negative.mean()) if values.numel() else math.nan,
        conflict_rate_weighted=(
            float((negative * pair_numel).sum() / pair_numel.sum()) if values.numel() else math.nan
        ),
        conflicts=_conflicts(stats, group_cos, step),
        length_scale=float(
            sum(g.scale * g.numel for g in stats.groups)
            / max(1, sum(g.numel for g in stats.groups))
        ),
        fallbacks=stats.fallbacks,
    )


def _conflicts(stats: StepStats, group_cos: Tensor, step: int) -> list[GroupConflict]:
    T = len(stats.tasks)
    # The diagonal (1, or NaN) must not count as a group's worst pair.
    eye = torch.eye(T, dtype=torch.bool)
    flat = torch.where(eye | torch.isnan(group_cos), math.inf, group_cos).flatten(1)
    worst, index = flat.min(1)
    out = []
    for g, (value, at) in enumerate(zip(worst.tolist(), index.tolist())):
        if not value < 0:  # agreeing (or undefined) groups are no conflict
            continue
        i, j = sorted(divmod(at, T))
        group = stats.groups[g]
        out.append(
            GroupConflict(
                key=group.key,
                param_names=tuple(group.param_names),
                pair=(stats.tasks[i], stats.tasks[j]),
                cosine=value,
                numel=group.numel,
                step=step,
            )
        )
    out.sort(key=lambda c: c.cosine)
    return out


def tag_affinity(dot: Tensor, loss: Tensor, lr: float) -> Tensor:
    """First-order TAG inter-task affinity ``Z[i, j] = lr * g_i . g_j / L_j``.

    TAG (Fifty et al., NeurIPS 2021) defines ``Z_{i->j} = 1 - L_j(theta - lr g_i) / L_j(theta)``:
    how much a step on language ``i`` alone lowers language ``j``'s loss, relative to it. Its
    first-order Taylor expansion is ``lr * g_i . g_j / L_j``. Positive: ``i`` helps ``j``.

    Args:
        dot: ``T x T`` Gramian ``g_i . g_j``.
        loss: ``T`` losses ``L_j`` (NaN where unknown; non-positive losses give NaN).
        lr: the learning rate of the step.
    """
    loss = loss.to(torch.float64)
    safe = torch.where(loss > 0, loss, math.nan)
    return lr * dot.to(torch.float64) / safe.unsqueeze(0)


def step_scalars(fig: Interference) -> dict[str, float]:
    """The step's scalars, named as the monitor logs them (without its prefix).

    Names come from :mod:`lightning_bmoo.vocabulary`. Undefined figures (NaN: a pair with a
    zero gradient, a language active nowhere) are left out, so that averages over an interval
    count only the steps that define them.
    """
    out: dict[str, float] = {
        vocab.COS_MIN.key(): fig.cos_min,
        vocab.COS_MEAN.key(): fig.cos_mean,
        vocab.CONFLICT_RATE.key(): fig.conflict_rate,
        vocab.CONFLICT_RATE_WEIGHTED.key(): fig.conflict_rate_weighted,
        vocab.UPDATE_RATIO.key(): fig.update_ratio,
        vocab.LENGTH_SCALE.key(): fig.length_scale,
        vocab.FALLBACKS.key(): float(fig.fallbacks),
    }
    tasks = fig.tasks
    # Python floats first: indexing a tensor per pair costs more than the figures at T = 16.
    columns = zip(fig.grad_norm.tolist(), fig.weight.tolist(), fig.weight_std.tolist())
    gains = zip(fig.gain.tolist(), fig.gain_mean.tolist())
    cos = fig.cos.tolist()
    for i, (a, (norm, weight, std), (gain, gain_mean)) in enumerate(zip(tasks, columns, gains)):
        out[vocab.GRAD_NORM.key(a)] = norm
        out[vocab.WEIGHT.key(a)] = weight
        out[vocab.WEIGHT_STD.key(a)] = std
        out[vocab.GAIN.key(a)] = gain
        out[vocab.GAIN_MEAN.key(a)] = gain_mean
        for j in range(i + 1, len(tasks)):
            out[vocab.COS.key(a, tasks[j])] = cos[i][j]
    return {k: v for k, v in out.items() if math.isfinite(v)}


def step_dots(fig: Interference) -> dict[tuple[str, str], float]:
    """``g_i . g_j`` of every ordered pair ``(i, j)``, ``i != j``, for affinities."""
    dot = fig.dot.tolist()
    return {
        (a, b): dot[i][j]
        for i, a in enumerate(fig.tasks)
        for j, b in enumerate(fig.tasks)
        if i != j and math.isfinite(dot[i][j])
    }


def pair_matrix(values: dict[tuple[str, str], float], languages: list[str]) -> Tensor:
    """The ``L x L`` matrix of ``values[(a, b)]`` over ``languages``; NaN where missing."""
    index = {lang: i for i, lang in enumerate(languages)}
    out = torch.full((len(languages), len(languages)), math.nan, dtype=torch.float64)
    for (a, b), value in values.items():
        if a in index and b in index:
            out[index[a], index[b]] = value
    return out
