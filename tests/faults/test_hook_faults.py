"""Faults inside a step: ranks out of step, a failing solver, NaN without a scaler, bad names."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.aggregators import MGDA, Aggregator
from lightning_bmoo.comm import register_bucket_moo_hook
from lightning_bmoo.comm.transports import PeerError, peers

from ..comm.workload import loss_of, make_model, nan_for_ru_at_step_1, train
from ..distributed import run_distributed
from .ranks import run_ranks


def _partial_step_on_rank_0(rank, world_size):
    model = make_model()
    ddp = DDP(model, bucket_cap_mb=0.002)
    state = register_bucket_moo_hook(ddp, "mgda", slots_per_rank=2)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    snapshots = []
    for step in range(2):
        for k in range(2):
            if rank == 0 and step == 0 and k == 1:
                break  # e.g. a caught exception: rank 0 skips its second slot...
            snapshots.append([p.detach().clone() for p in model.parameters()])
            with state.slot(["de", "en"][rank]):
                (loss_of(ddp, "en", step, k) / 2).backward()
        optimizer.step()  # ...and steps anyway
        optimizer.zero_grad()
    return "finished"


def test_ranks_out_of_step_fail_together_before_combining_the_wrong_slots():
    outcomes = run_ranks(_partial_step_on_rank_0, 2, timeout=20.0, deadline=60.0)
    for outcome in outcomes:
        assert not outcome.hung and outcome.error is not None, outcome
        assert "out of step" in outcome.error, outcome.error
        assert (
            "rank 0: step 0 slot 1 after 1 optimizer step(s), "
            "rank 1: step 0 slot 1 after 0 optimizer step(s)" in outcome.error
        ), outcome.error
    # Both fail in the first backward after the mismatch, long before any timeout.
    assert all(outcome.seconds < 10.0 for outcome in outcomes)


class Flaky(Aggregator):
    """MGDA, except on groups holding the hidden layer, where it raises or returns NaN."""

    name = "flaky_mgda"

    def __init__(self, failure: str) -> None:
        self.failure = failure
        self.mgda = MGDA()

    def _weights(self, K, *, tasks, key, generator):
        if "hidden" in str(key):
            if self.failure == "raise":
                raise ValueError("max() arg is an empty sequence")
            return torch.full((K.shape[0],), float("nan"), dtype=torch.float64)
        return self.mgda._weights(K, tasks=tasks, key=key, generator=generator)


@pytest.mark.parametrize("failure", ["raise", "nan"])
def test_a_failing_solver_falls_back_to_the_mean_on_every_rank_and_training_goes_on(failure):
    def run(rank, world_size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(
                rank, world_size, aggregator=Flaky(failure), granularity="parameter", steps=3
            )
        return result, [str(w.message) for w in caught]

    ranks = run_distributed(run, 2)
    for result, messages in ranks:
        for stats in result["stats"]:
            by_key = {g.key: g for g in stats.groups}
            hidden = by_key["hidden.weight"]
            assert (hidden.fallback is not None and "ValueError" in hidden.fallback) or (
                failure == "nan" and "nan" in hidden.fallback
            )
            T = int(hidden.active.sum())
            assert hidden.weights[hidden.active].tolist() == [1.0 / T] * T
            assert by_key["head.weight"].fallback is None  # other groups keep MGDA
            assert stats.fallbacks == 2  # hidden.weight and hidden.bias
        assert all(torch.isfinite(p).all() for p in result["params"])
        fallbacks = [m for m in messages if "failed on group" in m]
        assert len(fallbacks) == 1, messages  # one warning, not one per group and step
        assert "'flaky_mgda'" in fallbacks[0] and "'hidden." in fallbacks[0]
    for p, q in zip(ranks[0][0]["params"], ranks[1][0]["params"]):
        assert torch.equal(p, q)


def test_propagating_nan_without_a_scaler_warns_once():
    def run(rank, world_size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(
                rank,
                world_size,
                aggregator="mgda",
                steps=3,
                nonfinite="propagate",
                loss=nan_for_ru_at_step_1,
                layout=lambda step: ["en", "ru"],
            )
        return result["stats"][1].propagated, [str(w.message) for w in caught]

    propagated, messages = run_distributed(run, 2)[0]
    assert propagated == {"ru"}
    warned = [m for m in messages if "reach the update (nonfinite='propagate')" in m]
    assert len(warned) == 1 and "without one the optimizer applies NaN" in warned[0]


@pytest.mark.parametrize("name", ["x" * 65, "", "de|en", "zh/Hans", " en", "en\x00", 3], ids=repr)
def test_bad_language_names_are_refused_in_set_slot_on_one_rank_too(name):
    def run(rank, world_size):
        state = register_bucket_moo_hook(DDP(make_model()), "mgda", slots_per_rank=2)
        with pytest.raises(ValueError, match="language name"):
            state.set_slot(name)
        return True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one rank, one slot: "MOO is a no-op" is expected
        assert run_distributed(run, 1) == [True]


def test_peers_turns_a_collectives_runtime_error_into_a_peer_error_and_nothing_else():
    # gloo and NCCL report timeouts and lost peers as RuntimeError; the hook names them.
    closed = pytest.raises(PeerError, match="RuntimeError: Connection closed by peer")
    with closed as caught, peers():
        raise RuntimeError("Connection closed by peer")
    assert isinstance(caught.value.__cause__, RuntimeError)
    original = PeerError("already converted")
    with pytest.raises(PeerError) as caught, peers():
        raise original
    assert caught.value is original
    with pytest.raises(ValueError, match="not a collective"), peers():
        raise ValueError("not a collective's error")
