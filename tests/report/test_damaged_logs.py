"""Damaged, cut and unfinished logs: a clear error or a visibly partial page, never a wrong one.

The damaged W&B logs are byte-level edits of a real offline log that the session writes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_bmoo.report import LogError, load_runs, read_run
from lightning_bmoo.report.cli import main

from .dom import sections
from .synthetic import write_csv_run

BLOCK, HEADER = 32 * 1024, 7


def chunks(data: bytes) -> list[tuple[int, int, int, int]]:
    """``(offset, checksum, length, type)`` of every chunk of a LevelDB-style log."""
    out, offset = [], HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:
            offset += room
            continue
        checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        out.append((offset, checksum, length, kind))
        offset += HEADER + length
    return out


@pytest.fixture
def damage(
    logged_twice: tuple[Path, Path], tmp_path: Path
) -> Callable[[Callable[[bytearray], object]], Path]:
    """Copies the W&B run to ``tmp_path/runs`` and applies ``edit`` to its log's bytes."""

    def apply(edit: Callable[[bytearray], object]) -> Path:
        run_dir = tmp_path / "runs" / logged_twice[0].name
        shutil.copytree(logged_twice[0], run_dir)
        (log,) = run_dir.glob("run-*.wandb")
        data = bytearray(log.read_bytes())
        edit(data)
        log.write_bytes(bytes(data))
        # Damaged long ago: a log written in the last seconds is read again while W&B may
        # still be flushing it (see read_run), which would only slow these tests down.
        an_hour_ago = time.time() - 3600
        os.utime(log, (an_hour_ago, an_hour_ago))
        return log

    return apply


def middle_chunk(data: bytes) -> tuple[int, int, int, int]:
    return next(c for c in chunks(data)[len(chunks(data)) // 2 :] if c[2] > 40)


@pytest.fixture
def middle(logged_twice: tuple[Path, Path]) -> tuple[int, int]:
    """``(offset, length)`` of a chunk in the middle of the intact log."""
    (log,) = logged_twice[0].glob("run-*.wandb")
    offset, _, length, _ = middle_chunk(log.read_bytes())
    return offset, length


def report(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = main([*args, "-o", str(tmp_path / "r.html")])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(err: str, log: Path, offset: int) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bmoo-report: error: {log}: corrupt at byte {offset} ("), err


def test_the_checksum_is_wandbs_crc32_of_type_and_payload(logged_twice) -> None:
    (log,) = logged_twice[0].glob("run-*.wandb")
    data = log.read_bytes()
    found = chunks(data)
    assert len(found) > 20
    for offset, checksum, length, kind in found:
        payload = data[offset + HEADER : offset + HEADER + length]
        assert checksum == zlib.crc32(bytes([kind]) + payload), offset


def test_flipped_payload_bytes(damage, middle, tmp_path, capsys) -> None:
    offset, _ = middle

    def flip(data: bytearray) -> None:
        for i in range(offset + HEADER + 5, offset + HEADER + 9):
            data[i] ^= 0xFF

    log = damage(flip)
    rc, out, err = report([str(log.parent)], tmp_path, capsys)
    assert rc == 2 and out == ""
    assert_one_error_line(err, log, offset)
    assert "--partial shows the part before it" in err
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(LogError, match=f"corrupt at byte {offset}"):
        load_runs(log.parent)


@pytest.mark.parametrize("delta", [1, 40_000])  # inside its block / past it
def test_corrupted_chunk_length(damage, middle, tmp_path, capsys, delta: int) -> None:
    offset, length = middle
    log = damage(lambda data: struct.pack_into("<H", data, offset + 4, min(length + delta, 65535)))
    rc, _, err = report([str(log.parent)], tmp_path, capsys)
    assert rc == 2
    assert_one_error_line(err, log, offset)


def test_garbage_after_the_header(damage, tmp_path, capsys) -> None:
    rng = random.Random(0)
    log = damage(lambda data: data.__setitem__(slice(HEADER, HEADER + 300), rng.randbytes(300)))
    rc, _, err = report([str(log.parent)], tmp_path, capsys)
    assert rc == 2
    assert_one_error_line(err, log, HEADER)


def test_a_log_cut_in_half(damage, middle, tmp_path, capsys) -> None:
    offset, length = middle
    log = damage(lambda data: data.__delitem__(slice(offset + HEADER + length // 2, None)))
    rc, _, err = report([str(log.parent)], tmp_path, capsys)
    assert rc == 2
    assert_one_error_line(err, log, offset)
    assert "log ends inside a record" in err

    # --partial: the part before the cut, under a banner that says so.
    rc, out, err = report([str(log.parent), "--partial"], tmp_path, capsys)
    assert rc == 0 and err == ""
    assert f"warning: {log}: corrupt at byte {offset}" in out
    page = (tmp_path / "r.html").read_text()
    banner = re.search(r'<p class="banner incomplete">(.*?)</p>', page)
    assert banner and f"corrupt at byte {offset}" in banner.group(1)
    (run,) = load_runs(log.parent, partial=True)
    assert run.problem and 0 < max(run.by_step) < 39
    assert f"up to step {max(run.by_step)}" in banner.group(1)
    assert "incomplete log" in " ".join(sections(page)["overview"].text)


def test_partial_reading_keeps_exactly_the_records_before_the_damage(
    logged_twice, damage, middle
) -> None:
    (whole,) = load_runs(logged_twice[0])
    at = middle[0] + HEADER
    log = damage(lambda data: data.__setitem__(at, data[at] ^ 1))
    (run,) = load_runs(log.parent, partial=True)
    assert 0 < len(run.rows) < len(whole.rows)
    assert run.rows == whole.rows[: len(run.rows)]
    assert run.finished is False  # the exit record lies after the damage


def test_an_unfinished_run_is_marked(damage, tmp_path, capsys) -> None:
    def drop_exit(data: bytearray) -> None:
        last = max(c[0] for c in chunks(data) if c[3] in (1, 2))  # the exit record's start
        del data[last:]

    log = damage(drop_exit)
    assert not read_run(log.parent).finished
    rc, out, err = report([str(log.parent)], tmp_path, capsys)
    assert rc == 0 and err == ""
    assert "mgda-wb is unfinished" in out
    page = (tmp_path / "r.html").read_text()
    assert '<p class="banner unfinished">' in page and "no exit record" in page
    assert "unfinished: no exit record" in " ".join(sections(page)["overview"].text)


def test_a_bad_run_does_not_stop_the_others(damage, tmp_path, capsys) -> None:
    log = damage(lambda data: data.__setitem__(HEADER + 10, data[HEADER + 10] ^ 0x55))
    write_csv_run(tmp_path / "runs", "mean", steps=30)
    rc, out, err = report([str(tmp_path / "runs")], tmp_path, capsys)
    assert rc == 1
    assert f"bmoo-report: error: {log}: corrupt at byte {HEADER}" in err
    assert "1 run(s) left out" in err and "Wrote" in out
    s = sections((tmp_path / "r.html").read_text())
    assert s["overview"].classes["run"] == 1 and s["overview"].classes["failed"] == 1
    assert any(str(log) in t for t in s["overview"].text)
    assert s["losses"].svgs > 0  # the readable run is drawn
    page = (tmp_path / "r.html").read_text()
    assert '<p class="banner failed">' in page


def test_csv_field_over_the_csv_limit(tmp_path, capsys) -> None:
    run_dir = tmp_path / "big" / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("step,note\n0," + "x" * 200_000 + "\n")
    rc, _, err = report([str(run_dir)], tmp_path, capsys)
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert line == (
        f"bmoo-report: error: {run_dir / 'metrics.csv'}: line 2: a field is longer than "
        "128 KiB, Python's csv limit; not a CSVLogger log?"
    )


def test_a_log_still_being_flushed_is_read_once_it_is_whole(
    logged_twice: tuple[Path, Path], tmp_path: Path
) -> None:
    """wandb.finish() returns before W&B's writer is done: a report made at once must wait
    for the rest of the log rather than call it corrupt."""
    import threading

    from lightning_bmoo.report import read_run

    run_dir = tmp_path / "live" / logged_twice[0].name
    shutil.copytree(logged_twice[0], run_dir)
    (log,) = run_dir.glob("run-*.wandb")
    whole = log.read_bytes()
    log.write_bytes(whole[: len(whole) // 2])  # what the reader sees while the writer works
    writer = threading.Timer(1.0, log.write_bytes, args=(whole,))
    writer.start()
    try:
        run = read_run(run_dir)
    finally:
        writer.join()
    assert run.finished and run.problem is None
    assert len(run.history) == len(read_run(logged_twice[0]).history)
