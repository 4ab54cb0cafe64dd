"""Run logs shared by the report's tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .synthetic import write_wandb_and_csv_run


@pytest.fixture(scope="session")
def logged_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(wandb_run_dir, csv_dir)`` of one run logged to offline W&B and CSV at once.

    The folder above both is ``wandb_run_dir.parents[1]``. Tests that edit the files copy
    them first.
    """
    pytest.importorskip("wandb")
    return write_wandb_and_csv_run(tmp_path_factory.mktemp("twice"), "mgda-wb")
