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
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from examples.multilingual.cli import build_parser
from examples.multilingual.data import build_datasets
from examples.multilingual.finetune import evaluate
from examples.multilingual.finetuned import build_model, save_trained
from examples.multilingual.model import MultilingualLM, small_config
from examples.multilingual.texts import holdout_split, load_folder
from examples.multilingual.tokenizer import Tokenizer, train_tokenizer
from lightning_bmoo.adapters import load_language_adapters
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
    # Two ranks: the rank Lightning starts must write into the folder rank 0 chose, for the
    # run and for its plain-averaging baseline.
    first = finetune(*argv, "--devices", "2", "--baseline")
    second = finetune(*argv, "--devices", "1")

    name = "upgrad-bucket-data-2steps-s0"
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
    # --baseline: the same fine-tuning with plain averaging, in the run's folder, compared
    # language by language.
    results = json.loads((runs[0] / "results.json").read_text())
    baseline = json.loads((runs[0] / "baseline" / "results.json").read_text())
    assert baseline["aggregator"] == "mean" and baseline["run_dir"] == str(runs[0] / "baseline")
    assert (runs[0] / "baseline" / "csv" / "metrics.csv").stat().st_size > 0
    assert results["baseline"]["val_loss"] == baseline["val_loss"]
    assert "| language | mean | upgrad per bucket | difference |" in first
    for lang in WORDS:
        ours, mean = results["val_loss"][lang], baseline["val_loss"][lang]
        assert f"| {lang} | {mean:.3f} | {ours:.3f} | {ours - mean:+.3f} |" in first
    assert "no plain-averaging baseline" not in first
    # The fine-tuned model is a Hugging Face folder that reproduces the run's validation loss.
    assert results["saved"] == str(runs[0] / "model") and "fine-tuned model: model/" in first
    model = AutoModelForCausalLM.from_pretrained(results["saved"], local_files_only=True)
    assert_reproduces(results, model, data_dir, per_language=False)


def assert_reproduces(results: dict, model, data_dir: Path, *, per_language: bool) -> None:
    """The saved model gives the validation losses the run reported, on the same data."""
    tokenizer = Tokenizer.from_pretrained(results["saved"])
    _, val = holdout_split(load_folder(data_dir), 0.1, seed=0)
    datasets = build_datasets(val, tokenizer, 32)
    module = MultilingualLM(model, pad_id=tokenizer.pad_id, per_language=per_language)
    losses = evaluate(module, datasets, 2)
    assert losses == pytest.approx(results["val_loss"], rel=1e-4)
    assert losses != pytest.approx(results["val_loss_before"], rel=1e-4)  # it did train


def tiny_model_folder(data_dir: Path, folder: Path) -> Path:
    """A small random Llama and a tokenizer trained on the data: a user's --hf-model."""
    tokenizer = train_tokenizer(load_folder(data_dir), folder / "spm", vocab_size=400)
    config = small_config(tokenizer, 32, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def test_per_language_adapters_of_a_local_model_are_saved_loadable(
    data_dir: Path, tmp_path: Path
) -> None:
    base = tiny_model_folder(data_dir, tmp_path)
    out = finetune(
        "--data-dir", str(data_dir), "--hf-model", str(base), "--adapters", "per-language",
        "--out", str(tmp_path / "runs"), "--steps", "3", "--seq-len", "32", "--batch-size", "2",
        "--val-every", "3", "--logger", "csv", "--no-report", "--devices", "2",
        "--lr", "0.01", "--lora-rank", "2",
    )  # fmt: skip
    run = next((tmp_path / "runs").glob("*lora_per-language*/version_0"))
    results = json.loads((run / "results.json").read_text())
    assert results["base_model"] == str(base) and "LoRA adapters: adapters/<language>/" in out
    saved = Path(results["saved"]).glob("*/adapter_config.json")
    assert sorted(p.parent.name for p in saved) == sorted(WORDS)  # adapters/<lang>/
    fresh = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    model = load_language_adapters(fresh, results["saved"])
    assert sorted(model.peft_config) == sorted(WORDS)
    assert_reproduces(results, model, data_dir, per_language=True)


def test_a_shared_adapter_is_saved_loadable(data_dir: Path, tmp_path: Path) -> None:
    # In-process, no training: save_trained and the shared adapter's folder (a run as above
    # costs ~20 s of suite time for what the per-language run already covers).
    base = tiny_model_folder(data_dir, tmp_path)
    args = build_parser().parse_args(["--hf-model", str(base), "--adapters", "shared",
                                      "--seq-len", "32", "--lora-rank", "2"])  # fmt: skip
    tokenizer = Tokenizer.from_pretrained(base)
    module = build_model(args, base, tokenizer, sorted(WORDS))
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # as if trained: the adapter changes the output
    folder = save_trained(module, tokenizer, tmp_path / "run", "shared")
    assert folder.name == "adapter" and (folder / "adapter_config.json").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    loaded = PeftModel.from_pretrained(fresh, folder)
    ids = torch.tensor([tokenizer.encode(SENTENCES["en"])])
    torch.testing.assert_close(loaded(input_ids=ids).logits, module(ids))
    assert Tokenizer.from_pretrained(folder).encode("the book") == tokenizer.encode("the book")
