"""The fine-tuning example's command line: mistakes end in one line naming the option, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from examples.multilingual import cli, finetune


@pytest.fixture(autouse=True)
def _keep_threads():
    # run() sets torch's thread count for the example; leave the test process as it was.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs the example's main; asserts exit status 2 and returns its one error line."""
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "flag", "detail"),
    [
        (["--languages", "en", "xx"], "--languages", "no public-domain Bible for ['xx']"),
        (["--languages", "en", "en"], "--languages", "listed twice"),
        (["--steps", "0"], "--steps", "must be an integer >= 1, got 0"),
        (["--batch-size", "two"], "--batch-size", "expected an integer, got 'two'"),
        (["--lr=-1e-3"], "--lr", "must be a number >= 0.0"),
        (["--lr", "0"], "--lr", "must be a finite number > 0"),
        (["--temperature", "nan"], "--temperature", "must be a number >= 0.0"),
        (["--seq-len", "1"], "--seq-len", "must be an integer >= 2"),
        (["--aggregator", "sgd"], "--aggregator", "invalid choice: 'sgd'"),
        (["--aggregator-option", "c"], "--aggregator-option", "expected KEY=VALUE, got 'c'"),
        (["--aggregator-option", "c=0.5"], "--aggregator-option", "'c'"),
        (["--name", "a/b"], "--name", "cannot name a folder"),
        (["--hf-model", "no/such"], "--hf-model", "is no Hugging Face model folder"),
        (["--adapters", "all"], "--adapters", "invalid choice: 'all'"),
        (["--lora-rank", "0"], "--lora-rank", "must be an integer >= 1, got 0"),
        (["--precision", "8-true"], "--precision", "invalid choice: '8-true'"),
        (["--data-dir", "no/such/folder"], "--data-dir", "is not a folder"),
        (["--aggregator", "mean", "--baseline"], "--baseline", "is the baseline itself"),
    ],
)
def test_bad_options_fail_in_one_line_naming_the_option(argv, flag, detail, capsys):
    line = fails(argv, capsys)
    assert line.startswith(f"{cli.PROG}: error: argument {flag}: "), line
    assert detail in line


def write(folder: Path, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


LINES = "".join(f"line {i} of some text\n" for i in range(30))


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ({}, "is empty"),
        ({"en.txt": LINES, "fr.txt": "\n \n"}, "fr.txt holds no examples"),
        ({"en.txt": LINES, "fr.txt": "un seul exemple\n"}, "'fr' has 1; each language needs"),
        ({"en.txt": LINES, "fr.txt": "d\xe9j\xe0 vu\n".encode("latin-1")}, "not UTF-8 at byte 1"),
        ({"en.txt": LINES, "fr.csv": "a,b\n"}, "unsupported file type '.csv'"),
    ],
)
def test_data_that_cannot_serve_fails_before_any_work(files, detail, tmp_path, capsys):
    folder = write(tmp_path / "data", files)
    line = fails(["--data-dir", str(folder), "--cache", str(tmp_path / "cache")], capsys)
    assert line.startswith(f"{cli.PROG}: error: argument --data-dir: "), line
    assert detail in line
    assert not (tmp_path / "cache").exists()  # failed before the tokenizer


def test_languages_with_data_dir_must_be_files_there(tmp_path, capsys):
    folder = write(tmp_path / "data", {"en.txt": LINES, "de.txt": LINES})
    line = fails(["--data-dir", str(folder), "--languages", "en", "sw"], capsys)
    assert "argument --languages: ['sw'] have no file in" in line


def test_a_model_folder_that_does_not_fit_fails_naming_the_option(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from examples.multilingual.tokenizer import train_tokenizer

    folder = write(tmp_path / "data", {"en.txt": LINES, "de.txt": LINES})
    tokenizer = train_tokenizer({"en": LINES.splitlines()}, tmp_path / "spm", vocab_size=300)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    capsys.readouterr()  # transformers' progress bar
    common = ["--data-dir", str(folder), "--hf-model", str(tmp_path / "model")]
    line = fails(common, capsys)  # a model folder without its tokenizer
    assert "argument --hf-model: " in line and "holds no loadable tokenizer" in line
    tokenizer.save_pretrained(tmp_path / "model")
    line = fails([*common, "--seq-len", "32", "--batch-size", "1"], capsys)
    assert "argument --seq-len: 32 exceeds the model's 16 positions" in line
    line = fails([*common, "--seq-len", "8", "--batch-size", "1", "--adapters", "shared",
                  "--lora-targets", "no_such_proj"], capsys)  # fmt: skip
    assert "argument --lora-targets: " in line and "no_such_proj" in line
    dotted = write(tmp_path / "dotted", {"en.US.txt": LINES, "de.txt": LINES})
    line = fails(["--data-dir", str(dotted), "--hf-model", str(tmp_path / "model"), "--seq-len",
                  "8", "--batch-size", "1", "--adapters", "per-language"], capsys)  # fmt: skip
    assert "argument --data-dir: Language 'en.US' cannot name a peft adapter" in line


def test_help_shows_each_default_once_and_never_none():
    text = cli.build_parser().format_help()
    assert "default: None" not in text and "default: False" not in text
    name_help = re.search(r"\n  --name NAME(.*?)\n  --", text, re.S).group(1)
    assert name_help.count("default") == 1
    for action in cli.build_parser()._actions:
        shown = action.default is not None and action.default is not False
        if shown and action.default != "==SUPPRESS==":
            assert "(default: " in cli._Help("x")._get_help_string(action), action.dest


def test_options_the_sampler_warnings_name_exist():
    args = cli.build_parser().parse_args(["--no-coverage", "--no-drop-last"])
    assert (args.coverage, args.drop_last) == (False, False)
    args = cli.build_parser().parse_args([])
    assert (args.coverage, args.drop_last) == (True, True)
