"""The update the hook must give, computed in one process: an independent reference.

One slot at a time: each language's mean raw gradient per trainable parameter; every group
the hook reported solved with the aggregator over the languages whose rows are nonzero in
it; their rows combined. Parameters no slot used get no gradient at all (``None``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lightning_bmoo.aggregators import get_aggregator

Loss = Callable[[nn.Module, str, int, int], torch.Tensor]


def expected_grads(
    make_model: Callable[[], nn.Module],
    layout: Sequence[str],
    step: int,
    K: int,
    groups: list[tuple[str, list[str]]],
    aggregator: str,
    loss: Loss,
) -> dict[str, torch.Tensor | None]:
    """What ``.grad`` must hold after the step, per parameter name (``None``: never used).

    Args:
        make_model: builds the model exactly as the ranks do.
        layout: language of every slot (slot ``s`` is microbatch ``s % K`` of rank ``s // K``).
        step: the step (it selects the data).
        K: slots per rank.
        groups: the hook's groups as ``(key, parameter names)``.
        aggregator: the aggregator's name.
        loss: ``loss(model, language, step, slot)``.
    """
    tasks, rows, used = _task_rows(make_model, tuple(layout), step, K, loss)
    method = get_aggregator(aggregator)
    expected: dict[str, torch.Tensor | None] = {}
    for key, params in groups:
        G = torch.cat([rows[n] for n in params], dim=1)
        active = G.norm(dim=1) > 0
        d = torch.zeros(G.shape[1], dtype=torch.float64)
        if active.any():
            Ga = G[active]
            w = method(Ga @ Ga.T, tasks=[t for t, a in zip(tasks, active) if a], key=key)
            d = w @ Ga
        offset = 0
        for n in params:
            size = rows[n].shape[1]
            expected[n] = d[offset : offset + size] if used[n] else None
            offset += size
    return expected


@functools.cache
def _model(make_model: Callable[[], nn.Module]) -> nn.Module:
    return make_model()


@functools.cache
def _task_rows(make_model, layout: tuple[str, ...], step: int, K: int, loss: Loss):
    """Each language's mean raw gradient per trainable parameter, and which ones some slot
    used."""
    model = _model(make_model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    slot_rows = []
    for s, language in enumerate(layout):
        model.zero_grad(set_to_none=True)
        loss(model, language, step, s % K).backward()
        slot_rows.append(
            {
                n: None if p.grad is None else p.grad.double().flatten()
                for n, p in model.named_parameters()
                if p.requires_grad
            }
        )
    sizes = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    zero = {n: torch.zeros(sizes[n], dtype=torch.float64) for n in names}
    tasks = sorted(set(layout))
    rows = {
        n: torch.stack(
            [
                torch.stack(
                    [
                        zero[n] if r[n] is None else r[n]
                        for r, lang in zip(slot_rows, layout)
                        if lang == t
                    ]
                ).mean(0)
                for t in tasks
            ]
        )
        for n in names
    }
    used = {n: any(r[n] is not None for r in slot_rows) for n in names}
    return tasks, rows, used


def close(got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    """The reference's default tolerance: ``rtol=1e-4, atol=1e-6``."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=where)


def assert_grad_matches(
    got: torch.Tensor | None,
    want: torch.Tensor | None,
    where: str,
    close: Callable[[torch.Tensor, torch.Tensor, str], None] = close,
) -> None:
    """``got`` (a ``.grad``) is what :func:`expected_grads` says: ``None`` where no slot used
    the parameter, else ``close(got as float64 1-D, want, where)`` (by default within
    ``rtol=1e-4, atol=1e-6``)."""
    if want is None:
        assert got is None, where
    else:
        assert got is not None, where
        close(got.double().flatten(), want, where)
