from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.report import Run, build_report, load_runs
from lightning_bmoo.report.cli import main
from lightning_bmoo.report.families import matrices, monitor, pick_steps
from lightning_bmoo.report.sources import normalise_rows
from lightning_bmoo.report.svg import diverging, fmt, labelled_ticks, nice_ticks

from .dom import sections
from .synthetic import write_csv_run

LANGS = ["de", "en", "fr", "sw"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    write_csv_run(root, "mean", conflict=0.4, seed=1)
    write_csv_run(root, "mgda", conflict=0.2, seed=2)
    return root


def test_report_has_every_section_and_figure(two_runs: Path) -> None:
    runs = load_runs(two_runs)
    assert [r.name for r in runs] == ["mean/version_0", "mgda/version_0"]
    page = build_report(runs, snapshots=4)
    s = sections(page)
    assert list(s) == [
        "overview", "results", "losses", "conflict", "cosine", "groups", "affinity", "weights",
        "gradients", "update", "comm",
    ]  # fmt: skip
    # 3 per-language families x 2 runs side by side, + train/loss and val/loss overlays.
    assert s["losses"].svgs == 3 * 2 + 2
    assert "Training loss per language — mgda/version_0" in s["losses"].titles
    assert s["conflict"].svgs == 4
    assert s["update"].svgs == 3
    assert s["comm"].svgs == 3
    assert s["weights"].svgs == 2 * 2
    assert s["gradients"].svgs == 3 * 2
    # Cosines every 10 steps over 200 steps: 20 matrices. Per run: 4 snapshots, 1 colour
    # bar and 20 slider frames.
    assert s["cosine"].svgs == 2 * (4 + 1 + 20)
    for step in (0, 60, 130, 190):  # evenly spaced, last logged step included
        assert f"{vocab.COS.title} — step {step}" in s["cosine"].titles
    assert s["affinity"].svgs == 2 * (4 + 1 + 20)
    # affinity_exact is optional: skipped with a note, everything else drawn; CSV logs hold
    # no tables.
    assert any("affinity_exact" in n for n in s["affinity"].notes)
    assert any("W&B only" in n for n in s["groups"].notes)
    assert sum(len(x.notes) for x in s.values()) == 2
    assert s["overview"].svgs == s["results"].svgs == 0
    # No network at view time: nothing fetched from anywhere.
    for needle in ("http://", "https://", "src=", "<link", "@import"):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_results_table_has_last_validation_values(two_runs: Path) -> None:
    runs = load_runs(two_runs)
    text = " ".join(sections(build_report(runs))["results"].text)
    for run in runs:
        for lang in LANGS:
            step, loss = run.last(f"val/loss/{lang}")
            assert step == 199
            assert f"{loss:.4f}" in text
            assert f"{math.exp(loss):.3f}" in text


def test_cosine_matrix_is_symmetric_with_unit_diagonal(two_runs: Path) -> None:
    run = load_runs(two_runs / "mean")[0]
    by_step = matrices(run, monitor(vocab.COS))
    assert list(by_step) == list(range(0, 200, 10))
    cells = by_step[190]
    assert cells[("en", "de")] == cells[("de", "en")] == run.by_step[190]["interference/cos/de|en"]
    # Affinity is directed: both orders logged, kept apart.
    aff = matrices(run, monitor(vocab.AFFINITY))[190]
    assert aff[("de", "en")] == run.by_step[190]["interference/affinity/de|en"]
    assert aff[("en", "de")] == run.by_step[190]["interference/affinity/en|de"]


def test_missing_families_are_skipped_with_a_note(tmp_path: Path) -> None:
    # Only what the LightningModule logs, no InterferenceMonitor at all.
    d = tmp_path / "plain" / "version_0"
    d.mkdir(parents=True)
    with (d / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/loss", "val/loss/en", "val/ppl/en"])
        w.writerow([0, 0, 3.0, "", "", ""])
        w.writerow([0, 1, 2.5, "", "", ""])
        w.writerow([0, 1, "", 2.7, 2.7, math.exp(2.7)])
    s = sections(build_report(load_runs(tmp_path)))
    assert s["losses"].svgs == 4  # val loss, val ppl (per language), train/loss, val/loss
    for sid in ("conflict", "cosine", "groups", "affinity", "weights", "gradients", "update",
                "comm"):  # fmt: skip
        assert s[sid].svgs == 0, sid
        assert s[sid].notes and all("not logged" in n for n in s[sid].notes), sid
    assert "2.7000" in " ".join(s["results"].text)


def test_run_missing_a_family_is_named(two_runs: Path, tmp_path: Path) -> None:
    d = tmp_path / "bare" / "version_0"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("step,train/loss\n0,3.0\n1,2.0\n")
    runs = load_runs(two_runs) + load_runs(d, "bare")
    s = sections(build_report(runs))
    assert s["update"].svgs == 3
    assert any("bare" in n for n in s["update"].notes)


def test_lightning_step_epoch_suffixes_are_folded() -> None:
    rows = normalise_rows(
        [
            {"step": "0", "train/loss_step": "2.0", "interference/weight/en_step": "0.5"},
            {"step": "1", "train/loss_step": "1.0", "train/loss_epoch": "1.5"},
        ]
    )
    run = Run("r", "csv", Path("."), rows)
    assert run.key_for("train/loss") == "train/loss_step"
    assert run.series("train/loss_step") == ([0, 1], [2.0, 1.0])
    s = sections(build_report([run]))
    assert vocab.TRAIN_LOSS.title in s["losses"].titles
    assert vocab.WEIGHT.title in s["weights"].titles


def test_language_codes_with_hyphens_and_underscores() -> None:
    # BCP-47 tags and POSIX locales: '|' keeps pairs unambiguous, no guessing needed.
    rows = [{"step": 0, "interference/cos/en_US|zh-Hans": 0.5, "interference/loss/zh-Hans": 2}]
    run = Run("r", "csv", Path("."), normalise_rows(rows))
    assert matrices(run, monitor(vocab.COS))[0][("zh-Hans", "en_US")] == 0.5
    assert "zh-Hans" in " ".join(sections(build_report([run]))["losses"].text)


def test_pair_names_from_older_versions_are_named_not_guessed() -> None:
    rows = [{"step": 0, "interference/cos/de-en": 0.5, "interference/loss/de": 2.0}]
    s = sections(build_report([Run("old", "csv", Path("."), normalise_rows(rows))]))
    assert s["cosine"].svgs == 0
    assert any("interference/cos/de-en" in n and "older version" in n for n in s["cosine"].notes)


def test_helpers() -> None:
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(-0.07, 0.07)[0] >= -0.07
    # A range as narrow as float noise around 1 (plain averaging's update ratio): a few
    # ticks, not an endless loop (t += step no longer moves t there).
    noise = nice_ticks(1.0 - 1.1e-16, 1.0 + 2.2e-16)
    assert 1 <= len(noise) <= 12
    labels = [label for _, label in labelled_ticks(noise)]
    assert labels and len(set(labels)) == len(labels)
    # 3 digits would print "0.167" three times: one more digit tells them apart.
    assert [s for _, s in labelled_ticks([0.16664, 0.1667, 0.16676])] == [
        "0.1666", "0.1667", "0.1668"
    ]  # fmt: skip
    assert fmt(2.4e7) == "24M" and fmt(0.25) == "0.25" and fmt(0) == "0"
    assert diverging(-1, 1) == "#b2182b" and diverging(1, 1) == "#2166ac"
    assert diverging(0, 1) == "#f7f7f7"
    assert pick_steps(list(range(0, 100, 10)), 4) == [0, 30, 60, 90]
    assert pick_steps([5, 7], 4) == [5, 7]


def test_cli(two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "r.html"
    args = [str(two_runs / "mean"), str(two_runs / "mgda"), "-o", str(out)]
    assert main([*args, "-l", "mean", "-l", "mgda", "--title", "A vs B"]) == 0
    page = out.read_text()
    assert "<title>A vs B</title>" in page
    assert "Training loss per language — mgda" in page
    assert "Wrote" in capsys.readouterr().out


def test_cli_rejects_a_directory_without_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no run found" in err and "metrics.csv" in err and ".wandb" in err
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
