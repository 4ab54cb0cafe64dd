"""LanguageBatchSampler: language-homogeneous batches laid out over ranks and accumulation steps."""

from __future__ import annotations

import math
import warnings
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from .inputs import (
    WithLanguage,
    check_empty_languages,
    check_int,
    group_indices,
    read_field,
    resolve_rank,
)
from .schedule import (
    ProbabilitySpec,
    achievable_shares,
    build_schedule,
    resolve_probabilities,
    stable_seed,
)

_STATE_VERSION = 1


class LanguageBatchSampler(Sampler[list[int]]):
    """Batch sampler whose batches each hold a single language, scheduled across ranks and steps.

    An optimizer step has ``W * K`` *slots* (``W = world_size`` ranks, ``K = slots_per_rank``
    accumulated microbatches each). Slot ``s`` of step ``t`` is rank ``s // K``'s microbatch
    ``s % K``, i.e. the ``(t * K + s % K)``-th batch that rank yields. Every rank computes the
    same global schedule from ``(seed, epoch)`` and yields only its own slots.

    The schedule fills each step with ``min(W * K, L)`` distinct languages (``coverage=True``)
    and, over the epoch, gives each language a share of slots matching :attr:`probabilities`
    by largest-deficit scheduling (deviation bounded by a constant number of slots, not growing
    with the epoch).

    Epoch length: ``steps_per_epoch`` if given, else the steps one pass over the data takes,
    ``ceil(B_total / (W * K))`` (``floor`` with ``drop_last``), where ``B_total`` sums each
    language's batches per pass, ``ceil(n_l / batch_size)`` (``floor`` with ``drop_last``).
    ``len(sampler) == steps_per_epoch * K`` on every rank.

    Data: each language is read in a fresh random order per epoch, ``batch_size`` examples at a
    time, no example twice, until its slots in the epoch exceed one pass; then it is reshuffled
    and read again (upsampling). With ``drop_last=False`` the last batch of a pass is smaller
    and a language with fewer than ``batch_size`` examples gives batches of all its examples;
    with ``drop_last=True`` the remainder is left out and such a language is dropped with a
    warning.

    Args:
        languages: the language of every dataset index (``languages[i]`` for example ``i``), or
            a mapping of language to the dataset indices of its examples.
        batch_size: examples per batch (per slot).
        probabilities: ``"uniform"``, ``"proportional"`` (to example counts), a temperature
            ``tau > 0`` (``p_l ∝ n_l ** (1 / tau)``), or a dict of language to weight (missing
            languages get zero and are never sampled).
        slots_per_rank: ``K``, the batches each rank accumulates per optimizer step; must equal
            the trainer's ``accumulate_grad_batches``.
        seed: base seed of the schedule and the data order; identical on every rank.
        drop_last: drop the incomplete last batch of each language pass and the incomplete
            last step of the epoch (see above).
        steps_per_epoch: optimizer steps per epoch; derived from the data size when ``None``.
        coverage: require ``min(W * K, L)`` distinct languages per step. This bounds each
            share to ``>= 1 / (W * K)`` (when ``L <= W * K``) or ``<= 1 / (W * K)`` (otherwise);
            probabilities outside are clipped to the nearest achievable shares, with a warning.
            With ``False`` shares follow the probabilities exactly and steps may repeat a
            language while missing another.
        rank: this process's rank; from ``torch.distributed`` when initialised, else 0.
        world_size: number of ranks; from ``torch.distributed`` when initialised, else 1.

    Raises:
        ValueError: on invalid arguments (each message names the problem and the fix).
    """

    def __init__(
        self,
        languages: Sequence[str] | Mapping[str, Sequence[int]],
        batch_size: int,
        *,
        probabilities: ProbabilitySpec = "proportional",
        slots_per_rank: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        steps_per_epoch: int | None = None,
        coverage: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(languages, Sampler):
            # Lightning re-instantiates batch samplers as cls(sampler, batch_size=, drop_last=)
            # when it injects a DistributedSampler; without this check the indices would be
            # taken for language names.
            raise TypeError(
                "LanguageBatchSampler got a Sampler as its first argument: Lightning is trying to "
                "re-wrap it with a DistributedSampler. It already shards over ranks, so set "
                "Trainer(use_distributed_sampler=False). (Lightning also re-wraps batch samplers "
                "for trainer.predict; predict with a plain DataLoader.)"
            )
        check_int("batch_size", batch_size, 1)
        check_int("slots_per_rank", slots_per_rank, 1)
        check_int("seed", seed, None)
        if steps_per_epoch is not None:
            check_int("steps_per_epoch", steps_per_epoch, 1)
        rank, world_size = resolve_rank(rank, world_size)

        self.batch_size = batch_size
        self.slots_per_rank = slots_per_rank
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.coverage = bool(coverage)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

        groups = group_indices(languages)
        self._all_sizes = {lang: len(idx) for lang, idx in groups.items()}
        check_empty_languages(self._all_sizes, probabilities)
        requested = resolve_probabilities(probabilities, self._all_sizes)
        requested = self._drop_small_languages(requested)
        self.languages: list[str] = sorted(lang for lang, p in requested.items() if p > 0)
        total = sum(requested[lang] for lang in self.languages)
        self.requested_probabilities: dict[str, float] = {
            lang: requested[lang] / total for lang in self.languages
        }
        self.probabilities: dict[str, float] = achievable_shares(
            self.requested_probabilities, self.num_slots, self.coverage
        )
        self._warn_if_clipped()

        self._indices = [torch.as_tensor(groups[lang], dtype=torch.long) for lang in self.languages]
        self._batches_per_pass = [self._passes(len(idx)) for idx in self._indices]
        self.steps_per_epoch: int = (
            steps_per_epoch if steps_per_epoch is not None else self._default_steps()
        )
        self._shares = [self.probabilities[lang] for lang in self.languages]
        self._schedule_cache: tuple[int, array] | None = None
        self._position = 0  # batches yielded in the current epoch
        self._resume_from = 0  # start position of the next __iter__, set by load_state_dict

    # constructors -------------------------------------------------------------------------------

    @classmethod
    def from_datasets(
        cls,
        datasets: Mapping[str, Dataset],
        batch_size: int,
        *,
        language_key: str | None = None,
        **kwargs: Any,
    ) -> tuple[LanguageBatchSampler, ConcatDataset]:
        """Builds the sampler over one dataset per language, concatenated in sorted order.

        Args:
            datasets: mapping of language to that language's (map-style, sized) dataset.
            batch_size: examples per batch.
            language_key: if given, every example (which must then be a mapping) is returned as
                a dict with this key set to its language, as :func:`collate_with_language`
                expects.
            **kwargs: further :class:`LanguageBatchSampler` arguments.

        Returns:
            ``(sampler, dataset)``; use them as ``DataLoader(dataset, batch_sampler=sampler)``.
        """
        if not datasets:
            raise ValueError("from_datasets got no datasets: pass a dict of language to dataset.")
        groups: dict[str, list[int]] = {}
        parts: list[Dataset] = []
        offset = 0
        for lang in sorted(datasets):
            ds = datasets[lang]
            if language_key is not None:
                ds = WithLanguage(ds, lang, language_key)
            n = len(ds)  # type: ignore[arg-type]
            groups[lang] = list(range(offset, offset + n))
            parts.append(ds)
            offset += n
        return cls(groups, batch_size, **kwargs), ConcatDataset(parts)

    @classmethod
    def from_language_column(
        cls, dataset: Any, batch_size: int, *, column: str = "language", **kwargs: Any
    ) -> LanguageBatchSampler:
        """Builds the sampler from each example's language field.

        A dataset with ``column_names`` (e.g. a Hugging Face ``datasets.Dataset``) is read with
        ``dataset[column]`` in one go; otherwise every example is loaded and its ``column`` is
        read as a key (mappings) or an attribute.

        Args:
            dataset: map-style dataset of examples carrying their language.
            batch_size: examples per batch.
            column: key or attribute holding the language name.
            **kwargs: further :class:`LanguageBatchSampler` arguments.
        """
        if column in getattr(dataset, "column_names", ()):
            languages = list(dataset[column])
        else:
            languages = [read_field(dataset[i], column, i) for i in range(len(dataset))]
        return cls(languages, batch_size, **kwargs)

    # properties ---------------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        """Slots per optimizer step, ``world_size * slots_per_rank``."""
        return self.world_size * self.slots_per_rank

    @property
    def sampler(self) -> LanguageBatchSampler:
        """This sampler itself.

        Lightning's ``_set_sampler_epoch`` calls ``set_epoch`` on ``batch_sampler.sampler``,
        never on the batch sampler; this alias makes it reach :meth:`set_epoch` every epoch.
        """
        return self

    def __len__(self) -> int:
        return self.steps_per_epoch * self.slots_per_rank

    # schedule -----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose schedule the next iteration yields.

        Setting the current epoch again keeps a position restored by :meth:`load_state_dict`,
        so Lightning's call at the start of a resumed epoch does not rewind it.
        """
        check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch = epoch
            self._position = 0
            self._resume_from = 0

    def step_slots(self, step: int, epoch: int | None = None) -> list[str]:
        """Languages of the ``W * K`` slots of optimizer step ``step`` (counted within the epoch).

        Entry ``s`` is rank ``s // K``'s microbatch ``s % K``. Identical on every rank, so a DDP
        hook can know all ranks' languages without communicating.

        Args:
            step: optimizer step within the epoch, in ``[0, steps_per_epoch)``.
            epoch: the epoch; defaults to the current one (:meth:`set_epoch`).
        """
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside [0, {self.steps_per_epoch}) of the epoch.")
        schedule = self._schedule(self.epoch if epoch is None else epoch)
        start = step * self.num_slots
        return [self.languages[i] for i in schedule[start : start + self.num_slots]]

    def step_layout(self, step: int, epoch: int | None = None) -> list[str]:
        """Deprecated name of :meth:`step_slots`."""
        warnings.warn(
            "LanguageBatchSampler.step_layout is deprecated: use step_slots.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.step_slots(step, epoch)

    def __iter__(self) -> Iterator[list[int]]:
        # Set eagerly so that state_dict() right after iter() reports the start of this pass.
        self._position = self._resume_from
        return self._iterate()

    def _iterate(self) -> Iterator[list[int]]:
        # The restored position is consumed on the first next(), not by iter(): a
        # multi-worker DataLoader calls iter() on its batch sampler twice before fetching.
        epoch, start = self.epoch, self._resume_from
        self._resume_from = 0
        schedule = self._schedule(epoch)
        K, M = self.slots_per_rank, self.num_slots
        first_own = self.rank * K
        used = [0] * len(self.languages)  # batches of each language taken by earlier slots
        perms: dict[int, tuple[int, torch.Tensor]] = {}  # language -> (pass, permutation)
        for t in range(self.steps_per_epoch):
            base = t * M
            for s in range(M):
                lang = schedule[base + s]
                j = used[lang]
                used[lang] = j + 1
                own = s - first_own
                if 0 <= own < K and t * K + own >= start:
                    self._position = t * K + own + 1
                    yield self._batch(lang, j, epoch, perms)

    # resume -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Epoch, seed and position (batches yielded in the epoch), plus a config check.

        With ``num_workers > 0`` the DataLoader fetches ahead of training; set ``"position"``
        to the number of batches actually consumed before saving (see docs/sampler.md).
        """
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "position": self._position,
            "config": self._config(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores epoch, seed and position; the next iteration yields the remaining batches.

        Raises:
            ValueError: if the state came from a sampler with a different world size, slots per
                rank, batch size, languages or epoch length (the schedule would differ), or its
                position is outside the epoch.
        """
        config = dict(state.get("config", {}))
        mine = self._config()
        diff = sorted(k for k in mine if k in config and config[k] != mine[k])
        if diff:
            detail = ", ".join(f"{k}: saved {config[k]!r}, now {mine[k]!r}" for k in diff)
            raise ValueError(
                f"Cannot resume LanguageBatchSampler exactly: {detail}. Rebuild the sampler with "
                "the saved settings, or start a new epoch instead of loading the state."
            )
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"Saved position {position} is outside the epoch [0, {len(self)}].")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._position = self._resume_from = position
        self._schedule_cache = None

    # internals ----------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        # rank is left out: a rank's state may be loaded on any rank after a restart as long
        # as every rank ends up at the same position, which the equal lengths guarantee.
        return {
            "world_size": self.world_size,
            "slots_per_rank": self.slots_per_rank,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "coverage": self.coverage,
            "steps_per_epoch": self.steps_per_epoch,
            "languages": list(self.languages),
            "sizes": [len(idx) for idx in self._indices],
        }

    def _passes(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _default_steps(self) -> int:
        total = sum(self._batches_per_pass)
        steps = total // self.num_slots if self.drop_last else math.ceil(total / self.num_slots)
        if steps < 1:
            raise ValueError(
                f"The schedule cannot be filled: one pass over the data gives {total} batch(es) "
                f"of {self.batch_size}, fewer than the {self.num_slots} slots of one optimizer "
                f"step (world_size={self.world_size} x slots_per_rank={self.slots_per_rank}), and "
                "drop_last=True drops the incomplete step. Use drop_last=False, a smaller "
                "batch_size, or set steps_per_epoch (languages are then upsampled)."
            )
        return steps

    def _drop_small_languages(self, probs: dict[str, float]) -> dict[str, float]:
        if not self.drop_last:
            return probs
        small = sorted(
            lang for lang, p in probs.items() if p > 0 and self._all_sizes[lang] < self.batch_size
        )
        if not small:
            return probs
        if len(small) == sum(p > 0 for p in probs.values()):
            raise ValueError(
                f"The schedule cannot be filled: with drop_last=True every sampled language has "
                f"fewer than batch_size={self.batch_size} examples ({small}). Use "
                "drop_last=False or a smaller batch_size."
            )
        if self.rank == 0:  # every rank drops the same languages: say it once
            warnings.warn(
                f"Language(s) {small} have fewer than batch_size={self.batch_size} examples and "
                "are dropped because drop_last=True. Use drop_last=False to sample them in "
                "smaller batches.",
                UserWarning,
                stacklevel=3,
            )
        return {lang: (0.0 if lang in small else p) for lang, p in probs.items()}

    def _warn_if_clipped(self) -> None:
        moved = {
            lang: (self.requested_probabilities[lang], share)
            for lang, share in self.probabilities.items()
            if abs(share - self.requested_probabilities[lang]) > 1e-9
        }
        if not moved or self.rank != 0:  # every rank computes the same shares: say it once
            return
        detail = ", ".join(f"{lang}: {p:.4g} -> {s:.4g}" for lang, (p, s) in sorted(moved.items()))
        warnings.warn(
            f"With {len(self.languages)} languages in {self.num_slots} slots per step, covering "
            f"min(slots, languages) distinct languages per step changes the shares ({detail}). "
            "Pass coverage=False to follow the probabilities exactly, or change "
            "slots_per_rank / probabilities.",
            UserWarning,
            stacklevel=3,
        )

    def _schedule(self, epoch: int) -> array:
        # One epoch is cached: every rank's iterator and step_slots() read the same plan.
        if self._schedule_cache is None or self._schedule_cache[0] != epoch:
            schedule = build_schedule(
                self._shares,
                self.num_slots,
                self.steps_per_epoch,
                seed=self.seed,
                epoch=epoch,
                coverage=self.coverage,
            )
            self._schedule_cache = (epoch, schedule)
        return self._schedule_cache[1]

    def _batch(
        self, lang: int, j: int, epoch: int, perms: dict[int, tuple[int, torch.Tensor]]
    ) -> list[int]:
        """Dataset indices of language ``lang``'s ``j``-th batch in ``epoch``."""
        per_pass = self._batches_per_pass[lang]
        pass_, b = divmod(j, per_pass)
        cached = perms.get(lang)
        if cached is None or cached[0] != pass_:
            indices = self._indices[lang]
            gen = torch.Generator().manual_seed(
                stable_seed(self.seed, epoch, self.languages[lang], pass_)
            )
            cached = (pass_, indices[torch.randperm(len(indices), generator=gen)])
            perms[lang] = cached
        return cached[1][b * self.batch_size : (b + 1) * self.batch_size].tolist()
