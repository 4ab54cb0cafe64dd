"""The fine-tuning example end to end on tiny data: every run keeps its own folder.

It runs as a user runs it, in a subprocess: the strategy keeps its process group until the
process exits, which a forked test later in this process would inherit.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_env import ROOT, launch_env

SENTENCES = {
    "en": "the lord said unto them go and see what is written in the book",
    "ru": "и сказал господь им идите и посмотрите что написано в книге",
    "ar": "وقال الرب لهم اذهبوا وانظروا ما هو مكتوب في سفر الحياة",
}
WORDS = {lang: sentence.split() for lang, sentence in SENTENCES.items()}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rng = random.Random(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for lang, words in WORDS.items():
        lines = [" ".join(rng.choices(words, k=rng.randint(4, 10))) for _ in range(80)]
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def finetune(*argv: str) -> str:
    cmd = [sys.executable, "-m", "examples.multilingual.finetune", *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_runs_keep_both_results_and_say_where(data_dir: Path, tmp_path: Path) -> None:
    argv = [
        "--data-dir", str(data_dir), "--out", str(tmp_path / "runs"),
        "--cache", str(tmp_path / "cache"), "--steps", "2", "--pretrain-steps", "2",
        "--seq-len", "32", "--batch-size", "2", "--val-every", "2", "--monitor-every", "1",
        "--logger", "csv",
    ]  # fmt: skip
    # Two ranks: the rank Lightning starts must write into the folder rank 0 chose.
    first = finetune(*argv, "--devices", "2")
    second = finetune(*argv, "--devices", "1")

    name = "mgda-bucket-data-2steps-s0"
    runs = sorted((tmp_path / "runs" / name).iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run, out in zip(runs, (first, second)):
        results = json.loads((run / "results.json").read_text())
        assert results["run_dir"] == str(run)
        assert sorted(results["val_loss"]) == sorted(WORDS)
        assert (run / "csv" / "metrics.csv").stat().st_size > 0
        assert (run / "report.html").is_file()
        assert f"run folder: {run}" in out
    # The second run found the tokenizer and base model in the cache, and said so.
    assert "pretraining base: 2 steps" in first and "base model: cached" in second
    assert "tokenizer: cached" in second
    # The table says what its numbers are and that there is no baseline.
    assert "| language | before | after | change | perplexity after |" in second
    assert "no plain-averaging baseline" in second
