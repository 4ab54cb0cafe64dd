"""solve_group: one group's weights as a pure function of its Gramian."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_bmoo.aggregators import Aggregator, available_aggregators, get_aggregator
from lightning_bmoo.comm import solve_group

TASKS = ["ar", "de", "en", "fr"]


def _gramian(G: torch.Tensor) -> torch.Tensor:
    return (G @ G.T).double()


def _rows(seed: int, T: int = 4, n: int = 32) -> torch.Tensor:
    return torch.randn(T, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_language_with_a_zero_row_takes_no_part():
    G = _rows(0)
    G[2] = 0.0
    solution = solve_group(_gramian(G), TASKS, get_aggregator("mgda"))
    assert solution.active.tolist() == [True, True, False, True]
    assert solution.weights[2] == 0.0
    active = G[[0, 1, 3]]
    expected = get_aggregator("mgda")(active @ active.T)
    torch.testing.assert_close(solution.weights[[0, 1, 3]], expected)


def test_nonfinite_rows_are_dropped_or_propagated():
    K = _gramian(_rows(1))
    K[1, :] = K[:, 1] = float("nan")
    dropped = solve_group(K, TASKS, get_aggregator("upgrad"), nonfinite="drop")
    assert dropped.dropped == ("de",) and not dropped.propagated
    assert dropped.active.tolist() == [True, False, True, True] and dropped.weights[1] == 0
    assert torch.isfinite(dropped.weights).all()
    propagated = solve_group(K, TASKS, get_aggregator("upgrad"), nonfinite="propagate")
    assert propagated.propagated and propagated.weights.tolist() == [0.25] * 4


class _Broken(Aggregator):
    name = "broken"

    def __init__(self, result: str) -> None:
        self.result = result

    def _weights(self, K, *, tasks, key, generator):
        if self.result == "raise":
            raise ZeroDivisionError("float division by zero")
        if self.result == "nan":
            return torch.full((K.shape[0],), math.nan, dtype=torch.float64)
        return torch.ones(K.shape[0] + 1, dtype=torch.float64)  # wrong length


@pytest.mark.parametrize(
    ("result", "reason"),
    [("raise", "raised ZeroDivisionError"), ("nan", "returned [nan"), ("short", "returned [1.0")],
)
def test_a_failing_aggregator_falls_back_to_the_mean_of_the_active_languages(result, reason):
    G = _rows(2)
    G[0] = 0.0
    solution = solve_group(_gramian(G), TASKS, _Broken(result), key="layer.weight")
    assert reason in solution.fallback
    assert solution.weights.tolist() == [0.0, 1 / 3, 1 / 3, 1 / 3]


@pytest.mark.parametrize("name", available_aggregators())
def test_direction_only_keeps_the_direction_and_takes_the_means_length(name):
    for seed in range(5):
        G = _rows(seed)
        G[seed % 4] *= 10.0 ** (seed - 2)  # languages of very different gradient norms
        K = _gramian(G)
        free = solve_group(K, TASKS, get_aggregator(name), key="g", generator=_gen(seed))
        fixed = solve_group(
            K, TASKS, get_aggregator(name), key="g", generator=_gen(seed), direction_only=True
        )
        d, mean = fixed.weights @ G, G.mean(0)
        torch.testing.assert_close(d.norm(), mean.norm(), rtol=1e-9, atol=0.0)
        torch.testing.assert_close(fixed.weights, free.weights * fixed.scale, rtol=1e-12, atol=0)
        assert fixed.scale == pytest.approx(float(mean.norm() / (free.weights @ G).norm()))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_direction_only_leaves_a_vanished_update_alone():
    g = _rows(3, T=1)[0]
    G = torch.stack([g, -g])  # MGDA's min-norm point of two opposite gradients is zero
    solution = solve_group(_gramian(G), TASKS[:2], get_aggregator("mgda"), direction_only=True)
    assert solution.scale == 1.0
    assert (solution.weights @ G).norm() < 1e-6 * g.norm()


def test_the_same_gramian_gives_the_same_weights():
    K = _gramian(_rows(4))
    first = solve_group(K, TASKS, get_aggregator("pcgrad"), key="k", generator=_gen(1))
    again = solve_group(K.clone(), TASKS, get_aggregator("pcgrad"), key="k", generator=_gen(1))
    assert torch.equal(first.weights, again.weights)
