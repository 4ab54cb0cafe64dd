"""Which language fills which slot: probabilities, achievable shares and the epoch schedule.

Pure functions of their arguments (no torch.distributed, no datasets), so every rank computes
the identical schedule from the same seed and epoch without communicating.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import sys
from array import array
from collections.abc import Mapping

#: Ways to give the languages' sampling probabilities.
ProbabilitySpec = str | float | Mapping[str, float]


def stable_seed(*parts: object) -> int:
    """Derives a 63-bit seed from ``parts``, identical across processes and Python runs.

    ``hash()`` is salted per process (PYTHONHASHSEED), so it would desynchronise ranks.
    """
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_probabilities(spec: ProbabilitySpec, sizes: Mapping[str, int]) -> dict[str, float]:
    """Turns a probability spec into normalised probabilities over the languages of ``sizes``.

    Args:
        spec: ``"uniform"``, ``"proportional"`` (to the number of examples), a temperature
            ``tau > 0`` giving ``p_l ∝ n_l ** (1 / tau)`` (``1`` is proportional, ``inf``
            uniform), or an explicit mapping of language to non-negative weight; languages
            missing from the mapping get zero.
        sizes: number of examples of each language.

    Returns:
        The probability of every language in ``sizes`` (zeros included), summing to one.

    Raises:
        ValueError: on an unknown spec, a non-positive temperature, an unknown language in the
            mapping, a negative or non-finite weight, or weights summing to zero.
    """
    if isinstance(spec, str):
        if spec == "uniform":
            spec = math.inf
        elif spec == "proportional":
            spec = 1.0
        else:
            raise ValueError(
                f"Unknown probabilities {spec!r}: use 'uniform', 'proportional', a temperature "
                "tau > 0 (p ∝ n ** (1 / tau)), or a dict mapping language to weight."
            )
    if isinstance(spec, Mapping):
        unknown = sorted(str(k) for k in spec if k not in sizes)
        if unknown:
            raise ValueError(
                f"The probabilities name unknown language(s) {unknown}; the data has "
                f"{sorted(sizes)}. Fix the spelling or drop them from the dict."
            )
        weights = {lang: spec.get(lang, 0.0) for lang in sizes}
        for lang, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"The probability of {lang!r} must be a finite number, got {w!r}.")
            if w < 0:
                raise ValueError(
                    f"The probability of {lang!r} is negative ({w}); weights must be >= 0."
                )
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        tau = float(spec)
        if not tau > 0:  # also rejects NaN
            raise ValueError(
                f"The temperature must be > 0, got {spec!r}: tau=1 is proportional, larger "
                "tau flattens towards uniform (tau=float('inf'))."
            )
        weights = temperature_weights(sizes, tau)
    else:
        raise ValueError(
            f"probabilities must be 'uniform', 'proportional', a temperature or a dict, got "
            f"{type(spec).__name__}."
        )
    total = float(sum(weights.values()))
    if not total > 0:
        raise ValueError(
            "The probabilities sum to zero: give at least one language a positive weight."
        )
    return {lang: w / total for lang, w in weights.items()}


def temperature_weights(sizes: Mapping[str, int], tau: float) -> dict[str, float]:
    """Weights ``n_l ** (1 / tau)`` scaled so that the largest is 1, computed in log space.

    ``n ** (1 / tau)`` overflows a float for small ``tau`` (``1000 ** 1000``); the ratios
    ``exp((log n_l - log n_max) / tau)`` do not, and give the same probabilities once
    normalised. As ``tau -> 0`` they approach "everything on the largest language(s)"; a
    language with examples keeps at least the smallest positive float, so it stays in the
    schedule (where coverage may still give it slots) instead of vanishing at some ``tau``:
    the smallest normal float, which normalising over up to 65535 languages keeps above 0.
    Uniform is the ``tau = inf`` limit; languages without examples always weigh 0.

    Args:
        sizes: number of examples of each language.
        tau: the temperature, ``> 0`` (``inf`` allowed).
    """
    present = {lang: n for lang, n in sizes.items() if n > 0}
    if math.isinf(tau):
        return {lang: float(lang in present) for lang in sizes}
    if not present:
        return {lang: 0.0 for lang in sizes}
    log_max = math.log(max(present.values()))
    tiny = sys.float_info.min
    return {
        lang: max(math.exp((math.log(n) - log_max) / tau), tiny) if n > 0 else 0.0
        for lang, n in sizes.items()
    }


def share_bounds(num_languages: int, num_slots: int, coverage: bool) -> tuple[float, float]:
    """Bounds on a language's share of slots that the coverage rule imposes.

    With coverage, a step holds ``min(num_slots, num_languages)`` distinct languages: when the
    languages fit in a step each takes at least one of its ``num_slots`` slots, otherwise each
    takes at most one.
    """
    if not coverage:
        return 0.0, 1.0
    if num_languages <= num_slots:
        return 1.0 / num_slots, 1.0
    return 0.0, 1.0 / num_slots


def achievable_shares(
    probabilities: Mapping[str, float], num_slots: int, coverage: bool
) -> dict[str, float]:
    """The shares closest to ``probabilities`` that the coverage rule allows.

    Water-filling: ``s_l = clip(c * p_l, lo, hi)`` with ``c`` such that the shares sum to one.
    Only one of the bounds can bind (see :func:`share_bounds`), so fixing violators at the bound
    and renormalising the rest converges in at most ``L`` rounds.

    Args:
        probabilities: positive probabilities summing to one.
        num_slots: slots per optimizer step (world size times slots per rank).
        coverage: whether every step must hold ``min(num_slots, L)`` distinct languages.
    """
    lo, hi = share_bounds(len(probabilities), num_slots, coverage)
    fixed: dict[str, float] = {}
    while True:
        free = {lang: p for lang, p in probabilities.items() if lang not in fixed}
        rest = 1.0 - sum(fixed.values())
        total = sum(free.values())
        shares = {lang: rest * p / total for lang, p in free.items()}
        violators = {lang: s for lang, s in shares.items() if s < lo or s > hi}
        if not violators or len(violators) == len(free):
            shares.update(fixed)
            return {lang: shares[lang] for lang in probabilities}
        fixed.update({lang: (lo if s < lo else hi) for lang, s in violators.items()})


def build_schedule(
    shares: list[float], num_slots: int, num_steps: int, *, seed: int, epoch: int, coverage: bool
) -> array:
    """Assigns a language to every slot of every step of one epoch.

    Largest-deficit (credit) scheduling: before each step language ``l`` earns
    ``num_slots * shares[l]`` credit and every slot it takes costs one, and slots go to the
    largest credits. Credits stay bounded, so after ``t`` steps each language's slot count is
    ``t * num_slots * share`` up to a constant, not the ``sqrt(t)`` noise of iid draws. With
    ``coverage`` the first ``min(num_slots, L)`` slots of a step go to distinct languages.

    The seeded randomness only sets starting credits, tie-breaks, and the order of slots within
    a step (so that no rank always gets the same language); it never changes the counts.

    Args:
        shares: per-language share of slots (indexed by language id), summing to one.
        num_slots: slots per step (world size times slots per rank).
        num_steps: steps in the epoch.
        seed: base seed.
        epoch: epoch number; with ``seed``, fully determines the result.
        coverage: whether each step holds ``min(num_slots, L)`` distinct languages.

    Returns:
        ``array('H')`` of length ``num_steps * num_slots``; entry ``t * num_slots + s`` is the
        language id of slot ``s`` of step ``t``.
    """
    # "layout" is the stream's old name, kept so that schedules (and resumes) stay the same.
    rng = random.Random(stable_seed(seed, epoch, "layout"))
    num_languages = len(shares)
    credit = [rng.random() for _ in range(num_languages)]
    order = list(range(num_languages))
    rng.shuffle(order)
    priority = [0] * num_languages
    for rank, lang in enumerate(order):
        priority[lang] = rank
    earn = [num_slots * s for s in shares]
    distinct = min(num_slots, num_languages) if coverage else 0
    schedule = array("H")
    for _ in range(num_steps):
        for lang in range(num_languages):
            credit[lang] += earn[lang]
        picks: list[int] = []
        if distinct:
            ranked = sorted(range(num_languages), key=lambda lang: (-credit[lang], priority[lang]))
            picks = ranked[:distinct]
            for lang in picks:
                credit[lang] -= 1.0
        extra = num_slots - len(picks)
        if extra:
            heap = [(-credit[lang], priority[lang], lang) for lang in range(num_languages)]
            heapq.heapify(heap)
            for _ in range(extra):
                _, prio, lang = heapq.heappop(heap)
                credit[lang] -= 1.0
                picks.append(lang)
                heapq.heappush(heap, (-credit[lang], prio, lang))
        rng.shuffle(picks)
        schedule.extend(picks)
    return schedule
