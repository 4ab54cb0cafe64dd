"""The aggregator interface: a Gramian of task gradients in, task weights out."""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

# Relative asymmetry allowed in a Gramian: partial Gramians summed over ranks or chunks
# in float32 are symmetric only up to rounding.
_SYMMETRY_RTOL = 1e-4


def check_gramian(gramian: Tensor) -> Tensor:
    """Validates a Gramian and returns it as a symmetric float64 CPU tensor.

    Raises:
        ValueError: if the input is not a square matrix, holds NaN/inf, has a negative
            diagonal entry, or is not symmetric up to rounding.
    """
    M, _, exact = _checked(gramian)
    return M.clone() if exact else (M + M.T) / 2


def _checked(gramian: Tensor) -> tuple[Tensor, list[float], bool]:
    """Validates ``gramian`` as :func:`check_gramian` does, without symmetrising it.

    Returns the float64 CPU matrix (which may share memory with ``gramian``), its diagonal,
    and whether it is exactly symmetric (then symmetrising would be a no-op).
    """
    if not isinstance(gramian, Tensor):
        raise TypeError(f"The Gramian must be a torch.Tensor, got {type(gramian).__name__}.")
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(
            f"The Gramian must be a square T x T matrix with T >= 1, got shape "
            f"{tuple(gramian.shape)}. Build it as G @ G.T from the T x n task gradients."
        )
    # Aggregators run hundreds of times per step on tiny matrices, where each torch op costs
    # microseconds: the common case is settled on a numpy view of the matrix (a fraction of
    # a microsecond per op), and anything unusual falls through to the checks below, which
    # alone raise.
    M = gramian.detach() if gramian.requires_grad else gramian
    if M.dtype is not torch.float64 or not M.is_cpu:
        M = M.to(device="cpu", dtype=torch.float64)
    a = M.numpy(force=True)  # a view; force only resolves a lazy negation
    diag = a.diagonal().tolist()
    low = min(diag)
    # Bitwise symmetry (0.0 against -0.0 falls through, to the same result), and a finite
    # sum, which means finite entries (an inf or NaN entry makes the sum inf or NaN).
    if low >= 0.0 and a.tobytes() == a.T.tobytes() and math.isfinite(a.sum()):
        return M, diag, True
    # max |M - M^T| is finite only if every entry is (inf - inf is NaN, NaN compares False).
    asym = float(torch.dist(M, M.T, p=math.inf))
    # sqrt(K_ii K_jj) >= min_i K_ii, so this passes only what the full check passes; the
    # bound on low keeps K_ii K_jj clear of underflow, which the full check is subject to.
    if asym <= _SYMMETRY_RTOL * (1.0 - 1e-9) * low and low > 1e-140:
        return M, diag, False
    _full_check(M)
    return M, diag, False


def _full_check(M: Tensor) -> None:
    """Raises the error that describes what is wrong with the float64 CPU matrix ``M``."""
    if not torch.isfinite(M).all():
        raise ValueError(
            "The Gramian holds NaN or inf entries: some task gradient is not finite. Drop "
            "those tasks before aggregating (the bucket-MOO hook does this under "
            "nonfinite='drop') or let the step be skipped (nonfinite='propagate')."
        )
    diag = M.diagonal()
    if (diag < 0).any():
        raise ValueError(
            f"The Gramian has negative diagonal entries {diag.tolist()}: it is not positive "
            "semi-definite, so it is not a Gramian G @ G.T."
        )
    scale = torch.sqrt(torch.outer(diag, diag))
    if ((M - M.T).abs() > _SYMMETRY_RTOL * scale + 1e-300).any():
        raise ValueError(
            "The Gramian is not symmetric: M[i, j] != M[j, i] beyond rounding. Pass G @ G.T, "
            "not G or a product of two different matrices."
        )


def _conventional(diag: list[float]) -> Tensor | None:
    """The weights every method gives for one task or a zero Gramian; ``None`` otherwise."""
    T = len(diag)
    if T == 1:
        return torch.ones(1, dtype=torch.float64)
    if not any(diag):  # the diagonal is non-negative: zero iff every entry is 0
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    return None


def _matrix(gramian: Tensor, validate: bool) -> tuple[Tensor, list[float], bool]:
    """The float64 CPU Gramian, its diagonal, and whether it is exactly symmetric (else it is
    up to rounding); checked unless ``validate`` is false."""
    if validate:
        return _checked(gramian)
    M = gramian
    if M.dtype is not torch.float64 or not M.is_cpu:
        M = M.to(device="cpu", dtype=torch.float64)
    # Exact symmetry is the caller's promise: symmetrising here would cost about as much as
    # the checks it replaces.
    return M, M.numpy(force=True).diagonal().tolist(), True


def _task_names(tasks: Sequence[Hashable] | None, T: int) -> tuple[Hashable, ...]:
    """The names of the ``T`` tasks: ``range(T)`` by default."""
    if tasks is None:
        return tuple(range(T))
    if len(tasks) != T:
        raise ValueError(f"Got {len(tasks)} task names for a {T} x {T} Gramian.")
    return tuple(tasks)


class Aggregator(ABC):
    """Maps the Gramian ``M = G G^T`` of ``T`` task gradients to weights ``w`` (length ``T``).

    The update is ``d = sum_i w_i g_i``. Calling an aggregator validates ``M`` (see
    :func:`check_gramian`), solves in float64 on the CPU, and returns float64 CPU weights.

    Conventions shared by every method:

    * One task (``T == 1``) gives ``w = [1]``: the update is that task's gradient.
    * A zero Gramian gives ``w = 1/T``: the update is zero whatever the weights.
    * Weights are invariant under positive scaling of ``M``, so ``M`` is divided by its largest
      diagonal entry before the method runs; solvers work on numbers of order one.
    * Scale: ``mean`` gives the average gradient; every other method is normalised so that a
      learning rate tuned for plain averaging stays sensible (each class says how).

    Args of ``__call__``:
        gramian: the ``T x T`` Gramian.
        tasks: names of the ``T`` tasks (e.g. languages), used by stateful methods to keep
            state per task across calls in which the set of tasks changes. Defaults to
            ``range(T)``.
        key: which state to use for stateful methods (one per bucket or parameter group).
        generator: source of randomness for stochastic methods. Defaults to the
            aggregator's own generator, seeded at construction. Never the global RNG.
        validate: check the Gramian (see :func:`check_gramian`). ``False`` is a fast path for
            callers that guarantee a Gramian that is finite, exactly symmetric and has a
            non-negative diagonal (the bucket-MOO hook builds its own); it skips the checks
            and their synchronisations, not the conventions above. Anything else then gives
            undefined weights rather than an error. Gramians summed over chunks or ranks are
            symmetric only up to rounding: symmetrise them once, e.g. ``(M + M.mT) / 2`` over
            a whole stack of them.
    """

    name: ClassVar[str]
    #: Whether the method keeps state across calls (see :meth:`state_dict`).
    stateful: ClassVar[bool] = False
    #: Whether the method draws random numbers (see ``generator``).
    stochastic: ClassVar[bool] = False

    def __call__(
        self,
        gramian: Tensor,
        *,
        tasks: Sequence[Hashable] | None = None,
        key: Hashable = None,
        generator: torch.Generator | None = None,
        validate: bool = True,
    ) -> Tensor:
        M, diag, exact, tasks = self._prepared(gramian, tasks, validate)
        fixed = _conventional(diag)
        if fixed is not None:
            return fixed
        # Scaling copies M (methods may edit what they get); symmetrising after scaling keeps
        # exactly symmetric input bitwise unchanged, so both paths give the same weights.
        M = M / max(diag)
        if not exact:
            M = (M + M.T) / 2
        weights = self._weights(M, tasks=tasks, key=key, generator=generator)
        return weights if weights.dtype == torch.float64 else weights.to(torch.float64)

    def _prepared(
        self, gramian: Tensor, tasks: Sequence[Hashable] | None, validate: bool
    ) -> tuple[Tensor, list[float], bool, tuple[Hashable, ...]]:
        """The float64 CPU Gramian, its diagonal, whether it is exactly symmetric (else it is
        up to rounding) and the task names."""
        M, diag, exact = _matrix(gramian, validate)
        return M, diag, exact, _task_names(tasks, len(diag))

    @abstractmethod
    def _weights(
        self,
        M: Tensor,
        *,
        tasks: tuple[Hashable, ...],
        key: Hashable,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Returns the weights for a validated float64 Gramian with largest diagonal 1."""

    def state_dict(self) -> dict[str, Any]:
        """Returns the method's state (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a state returned by :meth:`state_dict`."""

    def reset(self) -> None:
        """Forgets all state (no-op for stateless methods)."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({options})"

    def _options(self) -> dict[str, Any]:
        return {}


class StatefulAggregator(Aggregator):
    """An aggregator that keeps one state per ``key`` (bucket or parameter group).

    Subclasses read and write ``self._state[key]``; its values must be built from tensors,
    numbers, strings, tuples, lists and dicts so that ``torch.save`` can store them.
    """

    stateful: ClassVar[bool] = True

    def __init__(self) -> None:
        self._state: dict[Hashable, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        """Returns a deep copy of the per-key state."""
        return {"state": copy.deepcopy(self._state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Replaces the per-key state by a copy of ``state_dict["state"]``."""
        if "state" not in state_dict:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict expects a dict with key 'state', got "
                f"keys {sorted(state_dict)}."
            )
        self._state = copy.deepcopy(state_dict["state"])

    def reset(self) -> None:
        """Forgets the state of every key."""
        self._state = {}


class StochasticMixin:
    """Owns a seeded ``torch.Generator`` used when no generator is passed to a call."""

    stochastic: ClassVar[bool] = True

    def _init_generator(self, seed: int) -> None:
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def _generator_or_own(self, generator: torch.Generator | None) -> torch.Generator:
        return self._generator if generator is None else generator
