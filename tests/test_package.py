"""The package's face: lazy exports, what each part imports, the strategy's registration."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightning_bmoo


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import lightning_bmoo", {"torch", "lightning"}),
        ("import lightning_bmoo.report, lightning_bmoo.report.cli", {"torch", "lightning"}),
        ("import lightning_bmoo.vocabulary", {"torch", "lightning"}),
        ("import lightning_bmoo.comm", {"lightning", "torchmetrics"}),
        ("import lightning_bmoo.aggregators", {"lightning", "torchmetrics"}),
        ("import lightning_bmoo.data", {"lightning", "torchmetrics"}),
    ],
)
def test_each_part_loads_only_what_it_uses(code, absent):
    assert not absent & _modules_after(code)


def test_every_exported_name_resolves():
    for name in lightning_bmoo.__all__:
        assert getattr(lightning_bmoo, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lightning_bmoo.nope  # noqa: B018


@pytest.mark.parametrize(
    "code",
    [
        "import lightning.pytorch as pl; import lightning_bmoo",  # Lightning first
        "import lightning_bmoo; import lightning.pytorch as pl",  # Lightning later
        "import lightning_bmoo; from lightning.pytorch import Trainer",
    ],
)
def test_the_strategy_names_are_registered(code):
    probe = "from lightning.pytorch.strategies import StrategyRegistry; "
    probe += "print(all(n in StrategyRegistry for n in ('bmoo', 'bmoo_fork', 'bmoo_fsdp')))"
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; {probe}"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"
