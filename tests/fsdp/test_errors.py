"""What the FSDP comm does not support fails at installation (or at the first backward pass)
with an error that names the problem and the fix."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_common import FSDPMeshInfo, ShardPlacementResult
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

from lightning_bmoo.comm import HookOptions, install_fsdp_bucket_moo_hook
from lightning_bmoo.comm import register_fsdp_bucket_moo_hook as register

from ..comm.heads import Heads, loss
from ..comm.workload import loss_of, make_model
from ..distributed import run_distributed
from .models import sharded_heads, sharded_mlp


def test_the_gather_transport_is_rejected_before_anything_is_installed():
    with pytest.raises(ValueError, match="transport='gather' does not apply to FSDP"):
        register(nn.Linear(2, 2), transport="gather")


def test_bad_options_and_undecided_options_are_rejected():
    with pytest.raises(ValueError, match="Unknown granularity"):
        register(nn.Linear(2, 2), granularity="layer")
    with pytest.raises(ValueError, match="undecided"):
        install_fsdp_bucket_moo_hook(nn.Linear(2, 2), HookOptions.build(slots_per_rank=None))


def test_a_model_without_fully_shard_units_is_rejected():
    with pytest.raises(TypeError, match="no fully_shard unit"):
        register(make_model())


class _FSDP1(FullyShardedDataParallel):
    """An FSDP1 wrapper as far as isinstance can tell (FSDP1 itself needs a GPU to build)."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)
        self.inner = module


def test_fsdp1_modules_are_rejected_with_the_fsdp2_recipe():
    model = make_model()
    model.hidden = _FSDP1(model.hidden)
    with pytest.raises(TypeError, match=r"FSDP2 .*not FullyShardedDataParallel .*fully_shard"):
        register(model)


def _error(build, run=None):
    try:
        model = build()
        state = register(model, "mgda")
        if run is not None:
            run(model, state)
    except (TypeError, ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _two_param_groups():
    model = make_model()
    ranks = list(range(torch.distributed.get_world_size()))
    other = DeviceMesh.from_group(torch.distributed.new_group(ranks), "cpu")
    info = FSDPMeshInfo(other, shard_mesh_dim=0)
    return fully_shard(
        model,
        shard_placement_fn=lambda p: ShardPlacementResult(Shard(0), info) if p.ndim == 1 else None,
    )


def _mesh_2d():
    return init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))


def _tensor_parallel():
    mesh = _mesh_2d()
    model = make_model()
    parallelize_module(model.hidden, mesh["tp"], ColwiseParallel())
    return fully_shard(model, mesh=mesh["dp"])


def _backward(model, state):
    with state.slot("de"):
        loss_of(model, "de", 0, 0).backward()


def _without_sync(model, state):
    model.set_requires_gradient_sync(False)
    _backward(model, state)


def _divide_factor_changed(model, state):
    model.set_gradient_divide_factor(2.0)
    _backward(model, state)


def _frozen_mid_step(model, state):
    state = register(model, "mgda", slots_per_rank=2)
    for k, language in enumerate(("de", "en")):
        with state.slot(language):
            (loss_of(model, language, 0, k) / 2).backward()
        model.hidden.bias.requires_grad_(False)


def _no_language(model, state):
    loss_of(model, "de", 0, 0).backward()


def _head_units():
    model = Heads()
    for head in model.heads.values():
        fully_shard(head)
    return fully_shard(model)


def _per_rank_heads(model, state):
    language = ("de", "en")[torch.distributed.get_rank()]
    with state.slot(language):
        loss(model, language, 0, 0).backward()


CASES = {
    "hsdp": (lambda: fully_shard(make_model(), mesh=_mesh_2d()), None),
    "tensor parallel": (_tensor_parallel, None),
    "two param groups": (_two_param_groups, None),
    "no sync": (sharded_mlp, _without_sync),
    "divide factor": (sharded_mlp, _divide_factor_changed),
    "no language": (sharded_mlp, _no_language),
    "frozen mid-step": (sharded_mlp, _frozen_mid_step),
    "head units": (_head_units, _per_rank_heads),
    "fine": (sharded_heads, _per_rank_heads),
}


def _every_case(rank, world_size):
    return {name: _error(build, run) for name, (build, run) in CASES.items()}


@pytest.fixture(scope="module")
def errors():
    return run_distributed(_every_case, 2)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("hsdp", "ValueError: .*a 2-D mesh \\(HSDP\\).*1-D data-parallel mesh"),
        ("tensor parallel", "ValueError: .*tensor-parallel \\(DTensor\\) parameters"),
        ("two param groups", "ValueError: .*2 parameter groups.*one mesh per fully_shard"),
        ("no sync", "RuntimeError: No backward pass reached.*set_requires_gradient_sync"),
        ("divide factor", "RuntimeError: .*reconfigured.*divide factor 2.0"),
        ("no language", "RuntimeError: .*without a language.*state.slot"),
        (
            "frozen mid-step",
            "RuntimeError: .*'hidden'.*\\['hidden.bias'\\].*between optimizer steps",
        ),
        ("head units", "RuntimeError: .*reduced different FSDP units.*per-language head"),
    ],
)
def test_unsupported_setups_fail_on_every_rank_with_the_fix(errors, case, message):
    for rank in errors:
        assert rank[case] is not None, case
        assert re.search(message, rank[case], re.S), rank[case]


def test_per_language_heads_inside_a_shared_unit_are_fine(errors):
    assert [rank["fine"] for rank in errors] == [None, None]


def _world_of_one(rank, world_size):
    return _error(sharded_mlp)


def test_world_size_one_says_what_to_use_instead():
    (message,) = run_distributed(_world_of_one, 1)
    assert message is not None
    assert "single rank" in message and "register_bucket_moo_hook" in message
