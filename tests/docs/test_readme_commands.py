"""The README's two commands stay what CI runs and what the project ships."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    main_job, tests = readme_commands()
    assert tests.endswith("python -m pytest")
    assert main_job.endswith("python -m examples.multilingual.finetune")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci


def test_readme_installs_a_cpu_torch_and_only_extras_that_exist():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = re.findall(r"^([\w-]+) = \[", table, re.M)  # (tomllib is Python 3.11+)
    assert {"examples", "dev", "cli", "monitor"} <= set(extras)
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for command in readme_commands():
        assert cpu_torch in command
        for group in re.findall(r'pip install -e "\.\[([\w,]+)\]"', command):
            assert set(group.split(",")) <= set(extras), group
