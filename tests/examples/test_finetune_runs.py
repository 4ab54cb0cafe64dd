"""The fine-tuning example end to end on tiny data: every run keeps its own folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from examples.multilingual import finetune

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


def test_two_runs_keep_both_results_and_say_where(data_dir, tmp_path, capsys, monkeypatch):
    # The in-process DDP job writes MASTER_ADDR/MASTER_PORT into os.environ: undo it after.
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    threads = torch.get_num_threads()
    argv = [
        "--data-dir", str(data_dir), "--out", str(tmp_path / "runs"),
        "--cache", str(tmp_path / "cache"), "--devices", "1", "--steps", "2",
        "--pretrain-steps", "2", "--seq-len", "32", "--batch-size", "2", "--val-every", "2",
        "--monitor-every", "1", "--logger", "csv",
    ]  # fmt: skip
    try:
        finetune.main(argv)
        first = capsys.readouterr().out
        finetune.main(argv)
        second = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)

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
