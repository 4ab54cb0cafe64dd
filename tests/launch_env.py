"""The environment for a test's subprocess that starts its own distributed job."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lightning writes MASTER_ADDR/MASTER_PORT into the environment of any process that joined a
# process group (an in-process fit with devices=1 does): a child inheriting them would bind a
# port chosen long ago, possibly taken by then.
_DISTRIBUTED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK",
                "LOCAL_WORLD_SIZE", "GROUP_RANK")  # fmt: skip


def launch_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without distributed settings, the repository on PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, **extra}
