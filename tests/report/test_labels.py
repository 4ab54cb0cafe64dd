"""What the page says matches what was measured: labels, numbers, ticks, tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.report import Run, build_report
from lightning_bmoo.report.sources import normalise_rows

from .dom import sections

P = vocab.MONITOR_PREFIX


def page_of(rows: list[dict], **run: object) -> dict:
    return sections(build_report([Run("r", "csv", Path("."), normalise_rows(rows), **run)]))


def test_update_ratio_is_labelled_as_what_it_measures() -> None:
    s = page_of([{"step": i, P + "update_ratio": 0.5 + i / 10} for i in range(3)])
    texts = [t for _, texts in s["update"].svg_texts for _, _, t in texts]
    assert "‖d‖ / ‖g_mean‖" in texts  # the y axis
    words = " ".join(s["update"].text)
    assert "relative to plain averaging" in words and "|Δθ|" not in words and "|θ|" not in words


def test_small_affinities_are_written_with_the_digits_they_need() -> None:
    values = {("de", "en"): 3.1e-5, ("en", "de"): -1.2e-7, ("de", "fr"): 8.0e-6,
              ("fr", "de"): -2.5e-6, ("en", "fr"): 4.4e-7, ("fr", "en"): 1.0e-5}  # fmt: skip
    row = {"step": 0, **{P + vocab.AFFINITY.key(a, b): v for (a, b), v in values.items()}}
    drawn = page_of([row])["affinity"].cell_values(f"{vocab.AFFINITY.title} — step 0")
    cells = drawn[0]  # the snapshot; the slider's frame is the same drawing
    assert drawn == [cells, cells]
    # Row by row, the diagonal never logged: de·en, de·fr, en·de, en·fr, fr·de, fr·en.
    expected = [values[a, b] for a in ("de", "en", "fr") for b in ("de", "en", "fr") if a != b]
    assert len(cells) == len(expected)
    for text, value in zip(cells, expected):
        assert math.isclose(float(text), value, rel_tol=0.05), (text, value)


def test_flat_curves_have_distinct_tick_labels() -> None:
    # Plain averaging's update ratio is 1 up to float noise; weights 1/3 exactly.
    noise = (0.0, 2.2e-16, -1.1e-16)
    rows = [
        {
            "step": i,
            P + "update_ratio": 1.0 + noise[i % 3],
            P + "weight/en": 1 / 3,
            P + "weight/de": 1 / 3,
        }
        for i in range(30)
    ]
    s = page_of(rows)
    for sid in ("update", "weights"):
        for ticks in s[sid].y_ticks():
            assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), (sid, ticks)


def test_the_gain_chart_explains_mgdas_equal_gains() -> None:
    s = page_of([{"step": 0, P + "gain/en": 0.2, P + "gain/de": 0.2}])
    words = " ".join(s["gradients"].text)
    assert "Under MGDA the gain lines coincide" in words and "‖d_g‖²" in words


def conflicts_table(tmp_path: Path, data: list[list]) -> dict:
    path = tmp_path / "conflicts.table.json"
    path.write_text(json.dumps({"columns": list(vocab.CONFLICT_COLUMNS), "data": data}))
    return {P + vocab.CONFLICTS.family: [(8, path)]}


def test_conflict_table_lists_only_conflicts(tmp_path: Path) -> None:
    data = [[7, "g1", "w1, b1", "de|en", -0.42, 100], [8, "g2", "w2", "de|fr", 0.3, 50]]
    s = page_of([{"step": 8, P + "cos_min": -0.42}], tables=conflicts_table(tmp_path, data))
    words = " ".join(s["groups"].text)
    assert "g1" in words and "-0.4200" in words and "de|en" in words
    assert "g2" not in words  # a positive cosine is no conflict (tables from older versions)
    assert s["groups"].tags["tr"] == 2  # header + one row


def test_no_conflicting_group_is_said(tmp_path: Path) -> None:
    data = [[8, "g2", "w2", "de|fr", 0.3, 50]]
    s = page_of([{"step": 8, P + "cos_min": 0.3}], tables=conflicts_table(tmp_path, data))
    assert "No conflicting group at step 8." in " ".join(s["groups"].text)
    assert s["groups"].tags["table"] == 0
