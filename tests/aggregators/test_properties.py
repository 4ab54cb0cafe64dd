"""Properties that every registered aggregator must have, checked on seeded samplers."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import _base, available_aggregators, get_aggregator

from .samplers import KINDS, gramian, sample_gradients

NAMES = available_aggregators()
SIZES = (1, 2, 3, 5, 8, 16)

# Methods whose update never conflicts with any task (g_i . d >= 0), with the options and
# task counts for which the theory says so.
CONFLICT_AVERSE = {
    "mgda": ({}, SIZES),
    "upgrad": ({}, SIZES),
    "cagrad": ({"c": 1.0}, SIZES),
    "pcgrad": ({}, (1, 2)),
}


def weights(name, M, seed=0, **options):
    """Weights from a fresh aggregator and a fresh generator seeded with ``seed``."""
    aggregator = get_aggregator(name, **options)
    return aggregator(M, generator=torch.Generator().manual_seed(seed))


def assert_not_conflicting(G, w):
    d = w @ G
    scale = G.norm(dim=1) * d.norm()
    assert ((G @ d) >= -1e-7 * scale - 1e-12).all(), (G @ d, scale)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", SIZES)
def test_shape_dtype_and_finite(name, kind, T):
    G = sample_gradients(kind, T)
    w = weights(name, gramian(G))
    assert w.shape == (T,)
    assert w.dtype == torch.float64
    assert torch.isfinite(w).all()


# A random visiting order (PCGrad, GradVac) is only equivariant in distribution, except
# for two tasks, where there is nothing to order. Random weights do not follow the tasks.
NOT_EQUIVARIANT = {"random"}
EQUIVARIANT = [
    (name, T)
    for name in NAMES
    for T in (2, 3, 5, 8)
    if name not in NOT_EQUIVARIANT and (T == 2 or not get_aggregator(name).stochastic)
]


@pytest.mark.parametrize(("name", "T"), EQUIVARIANT)
@pytest.mark.parametrize("kind", ["random", "conflicting", "extreme_scale"])
def test_permutation_equivariant(name, kind, T):
    G = sample_gradients(kind, T, seed=1)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(T))
    if torch.equal(perm, torch.arange(T)):
        perm = perm.roll(1)  # the draw for T = 2 is the identity, which would test nothing
    w = weights(name, gramian(G))
    w_perm = weights(name, gramian(G[perm]))
    d, d_perm = w @ G, w_perm @ G[perm]
    torch.testing.assert_close(d_perm, d, rtol=1e-6, atol=1e-9 * G.norm().item())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["random", "conflicting", "rank_deficient"])
@pytest.mark.parametrize("factor", [1e-8, 1e-3, 7.0, 1e8])
def test_weights_invariant_under_positive_scaling(name, kind, factor):
    M = gramian(sample_gradients(kind, 5, seed=2))
    torch.testing.assert_close(weights(name, factor * M), weights(name, M), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CONFLICT_AVERSE))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_not_conflicting(name, kind, seed):
    options, sizes = CONFLICT_AVERSE[name]
    for T in sizes:
        G = sample_gradients(kind, T, seed=seed)
        assert_not_conflicting(G, weights(name, gramian(G), **options))


@pytest.mark.parametrize("name", NAMES)
def test_single_task_is_its_gradient(name):
    assert weights(name, torch.tensor([[4.0]])).tolist() == [1.0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [2, 4])
def test_zero_gramian_gives_uniform_weights(name, T):
    assert torch.equal(
        weights(name, torch.zeros(T, T)), torch.full((T,), 1.0 / T, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", NAMES)
def test_one_zero_task_among_others_is_finite(name):
    G = sample_gradients("random", 4)
    G[2] = 0.0
    assert torch.isfinite(weights(name, gramian(G))).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    M = gramian(sample_gradients("conflicting", 6))
    assert torch.equal(weights(name, M, seed=3), weights(name, M, seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_float32_input_gives_float64_weights_close_to_float64_input(name):
    M = gramian(sample_gradients("random", 4, seed=5))
    torch.testing.assert_close(weights(name, M.float()), weights(name, M), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN or inf"),
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), "NaN or inf"),
        (torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]]), "NaN or inf"),
        (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), "NaN or inf"),
        (torch.ones(2, 3), "square"),
        (torch.ones(3), "square"),
        (torch.zeros(0, 0), "square"),
        (torch.tensor([[1.0, 0.5], [-0.5, 1.0]]), "not symmetric"),
        (torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), "negative diagonal"),
    ],
)
def test_bad_gramian_is_a_clear_error(name, bad, match):
    with pytest.raises(ValueError, match=match):
        get_aggregator(name)(bad)


@pytest.mark.parametrize("name", NAMES)
def test_views_and_signed_zeros_are_read_as_their_values(name):
    """The checks read the matrix's values, whatever its layout: a strided view, a lazily
    negated tensor, and -0.0 for 0.0 give the weights of the plain matrix."""
    M = gramian(sample_gradients("conflicting", 4, seed=6))
    M = (M + M.T) / 2
    M[0, 1] = M[1, 0] = 0.0
    expected = fresh_weights(name, M)
    big = torch.zeros(8, 8, dtype=torch.float64)
    big[::2, ::2] = M
    signed = M.clone()
    signed[0, 1] = -0.0
    for same in (big[::2, ::2], torch._neg_view(-M), signed):
        assert torch.equal(fresh_weights(name, same), expected)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_number_of_task_names(name):
    with pytest.raises(ValueError, match="task names"):
        get_aggregator(name)(torch.eye(3), tasks=["en", "de"])


@pytest.mark.parametrize("name", [n for n in NAMES if get_aggregator(n).stateful])
def test_state_dict_round_trip_continues_identically(name):
    Ks = [gramian(sample_gradients("conflicting", 4, seed=s)) for s in range(6)]
    tasks = ["en", "de", "fr", "ru"]
    a, b = get_aggregator(name), get_aggregator(name)
    for M in Ks[:3]:
        a(M, tasks=tasks, key="bucket0", generator=torch.Generator().manual_seed(0))
    b.load_state_dict(a.state_dict())
    for M in Ks[3:]:
        wa = a(M, tasks=tasks, key="bucket0", generator=torch.Generator().manual_seed(1))
        wb = b(M, tasks=tasks, key="bucket0", generator=torch.Generator().manual_seed(1))
        assert torch.equal(wa, wb)
    a.reset()
    fresh = get_aggregator(name)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(
        a(Ks[0], tasks=tasks, key="bucket0", generator=gen()),
        fresh(Ks[0], tasks=tasks, key="bucket0", generator=gen()),
    )


def fresh_weights(name, M, **kwargs):
    """Weights from a fresh aggregator and a generator seeded with 0 (state starts empty)."""
    return get_aggregator(name)(M, generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
def test_trusted_path_gives_the_same_weights(name, kind, T):
    M = gramian(sample_gradients(kind, T, seed=4))
    M = (M + M.T) / 2  # exactly symmetric, as the trusted path requires
    copy = M.clone()
    trusted = fresh_weights(name, M, validate=False)
    assert torch.equal(trusted, fresh_weights(name, M))
    assert torch.equal(M, copy), "the caller's Gramian was modified"


@pytest.mark.parametrize("name", NAMES)
def test_trusted_path_skips_validation_but_keeps_the_conventions(name, monkeypatch):
    def fail(gramian):
        raise AssertionError("validate=False must not validate")

    monkeypatch.setattr(_base, "_checked", fail)
    assert fresh_weights(
        name, torch.tensor([[4.0]], dtype=torch.float64), validate=False
    ).tolist() == [1.0]
    zero = torch.zeros(3, 3, dtype=torch.float64)
    for zeros in (zero, -zero):  # -0.0 on the diagonal is zero too
        assert fresh_weights(name, zeros, validate=False).tolist() == [1 / 3] * 3
    M = gramian(sample_gradients("conflicting", 4, seed=5))
    M = (M + M.T) / 2
    torch.testing.assert_close(
        fresh_weights(name, 1e6 * M, validate=False),
        fresh_weights(name, M, validate=False),
        rtol=1e-6,
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="task names"):
        get_aggregator(name)(M, tasks=["en"], validate=False)
    # A float32 Gramian (exactly symmetric) gives the weights of its float64 copy.
    K32 = M.float()
    torch.testing.assert_close(
        fresh_weights(name, K32, validate=False),
        fresh_weights(name, K32.double(), validate=False),
        rtol=0,
        atol=0,
    )
