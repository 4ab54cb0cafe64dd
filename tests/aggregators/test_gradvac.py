"""GradVac against the paper's vector-form algorithm, with targets kept per task name."""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
import torch

from lightning_bmoo.aggregators import GradVac, get_aggregator

from .samplers import KINDS, gramian, sample_gradients
from .test_pcgrad import draw_orders

Targets = dict[tuple[Hashable, Hashable], float]


def gradvac_reference(
    G: torch.Tensor, orders: list[list[int]], tasks: list[str], targets: Targets, beta: float
) -> torch.Tensor:
    """Algorithm 1 of Wang et al. (2021) on the gradient vectors, averaged instead of summed.

    Updates ``targets`` in place.
    """
    modified = []
    for i, order in enumerate(orders):
        g = G[i].clone()
        for j in order:
            norm_g, norm_j = g.norm().item(), G[j].norm().item()
            # Skip pairs without a cosine, including a g that Eq. 3 zeroed (phi = -1).
            if norm_g <= 1e-6 * G[i].norm().item() or norm_j == 0:
                continue
            phi = (g @ G[j]).item() / (norm_g * norm_j)
            pair = (tasks[i], tasks[j])
            hat = targets.get(pair, 0.0)
            if phi < hat:
                sin_phi, sin_hat = math.sqrt(1 - phi**2), math.sqrt(1 - hat**2)
                g = g + norm_g * (hat * sin_phi - phi * sin_hat) / (norm_j * sin_hat) * G[j]
                # Eq. 3 lifts the cosine to the target exactly (at phi = -1 it zeroes g).
                if sin_phi > 1e-6:
                    assert math.isclose((g @ G[j] / (g.norm() * norm_j)).item(), hat, abs_tol=1e-8)
            targets[pair] = (1 - beta) * hat + beta * phi
        modified.append(g)
    return torch.stack(modified).mean(dim=0)


def assert_same_update(w, G, expected):
    # At cosines near -1, sqrt(1 - phi^2) turns rounding of 1e-16 into 1e-8 (sqrt(eps)).
    torch.testing.assert_close(w @ G, expected, rtol=1e-8, atol=1e-9 * G.norm().item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_matches_vector_algorithm_over_several_calls(kind, T):
    tasks = [f"lang{t}" for t in range(T)]
    aggregator, targets = GradVac(beta=0.3), {}
    for step in range(4):
        G = sample_gradients(kind, T, seed=step)
        w = aggregator(gramian(G), tasks=tasks, generator=torch.Generator().manual_seed(step))
        expected = gradvac_reference(G, draw_orders(T, step), tasks, targets, beta=0.3)
        assert_same_update(w, G, expected)
    assert aggregator.state_dict()["state"][None] == pytest.approx(targets, rel=1e-9, abs=1e-12)


def test_state_is_kept_per_task_name_when_a_task_is_absent():
    calls = [["en", "de", "fr"], ["en", "fr"], ["fr", "de", "en"], ["de", "en", "ru", "fr"]]
    aggregator, targets = GradVac(beta=0.5), {}
    for step, tasks in enumerate(calls):
        G = sample_gradients("conflicting", len(tasks), seed=step)
        before = {p: v for p, v in targets.items() if "de" in p}
        w = aggregator(
            gramian(G), tasks=tasks, key="b", generator=torch.Generator().manual_seed(step)
        )
        expected = gradvac_reference(G, draw_orders(len(tasks), step), tasks, targets, 0.5)
        assert_same_update(w, G, expected)
        if "de" not in tasks:
            assert {p: v for p, v in targets.items() if "de" in p} == before != {}
    assert aggregator.state_dict()["state"]["b"] == pytest.approx(targets, rel=1e-9, abs=1e-12)


def test_state_is_kept_per_key():
    G = sample_gradients("conflicting", 3)
    aggregator = GradVac(beta=0.5)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    first = aggregator(gramian(G), key="a", generator=gen())
    assert torch.equal(aggregator(gramian(G), key="b", generator=gen()), first)
    assert not torch.equal(aggregator(gramian(G), key="a", generator=gen()), first)


def test_state_dict_round_trip_survives_torch_save(tmp_path):
    a = GradVac(beta=0.2)
    for step in range(3):
        M = gramian(sample_gradients("random", 4, seed=step))
        a(M, tasks=["en", "de", "fr", "ru"], key=("bucket", 0))
    torch.save(a.state_dict(), tmp_path / "gradvac.pt")
    b = GradVac(beta=0.2)
    b.load_state_dict(torch.load(tmp_path / "gradvac.pt", weights_only=True))
    M = gramian(sample_gradients("conflicting", 4))
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    kwargs = {"tasks": ["en", "de", "fr", "ru"], "key": ("bucket", 0)}
    assert torch.equal(a(M, generator=gen(), **kwargs), b(M, generator=gen(), **kwargs))


def test_first_call_without_negative_cosine_is_the_mean():
    G = sample_gradients("aligned", 6)
    assert torch.equal(GradVac()(gramian(G)), torch.full((6,), 1 / 6, dtype=torch.float64))


def test_extreme_targets_stay_finite():
    # beta = 1 on duplicated tasks drives the targets to exactly 1.
    aggregator = GradVac(beta=1.0)
    for step in range(3):
        kind = "duplicated" if step < 2 else "conflicting"
        w = aggregator(gramian(sample_gradients(kind, 4, seed=step)), tasks=list("abab"))
        assert torch.isfinite(w).all()


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_invalid_beta_is_a_clear_error(beta):
    with pytest.raises(ValueError, match=r"beta .* must be in \(0, 1\]"):
        get_aggregator("gradvac", beta=beta)


def test_beta_one_is_allowed_and_shown():
    assert repr(GradVac(beta=1)) == "GradVac(beta=1.0, seed=0)"
