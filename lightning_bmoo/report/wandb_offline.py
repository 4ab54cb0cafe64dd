"""Reads offline W&B run directories (``wandb/offline-run-*``) without a network or a server.

wandb has no Python reader for offline runs. Their ``run-<id>.wandb`` file is a LevelDB-style
log: a 7-byte file header, then 32 KiB blocks of chunks, each chunk a 7-byte header (checksum,
length, type) and a piece of one serialized ``wandb_internal_pb2.Record``. Every chunk's
checksum is verified, so a damaged log is reported at the byte where it goes wrong instead of
being decoded into wrong numbers. wandb itself is imported only to decode records.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LogError

if TYPE_CHECKING:
    from wandb.proto import wandb_internal_pb2 as pb

_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
_BLOCK = 32 * 1024
# A log modified this recently may still be being written (see read_run).
_FRESH_AGE = 5.0
_FRESH_WAIT = 30.0
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# W&B's writers (wandb-core, and the Python datastore before it) checksum a chunk with zlib's
# CRC-32 of its type byte followed by its payload, unmasked: not LevelDB's masked CRC32C,
# whatever their comments say. Checked on logs written by wandb 0.31.
_TYPE_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (_FULL, _FIRST, _MIDDLE, _LAST)}


@dataclass
class OfflineRun:
    """What an offline run recorded.

    Attributes:
        path: the run directory.
        run_id: the run's id.
        name: the run's display name (``WandbLogger(name=...)``), if it has one.
        history: one dict per ``wandb.log`` call, in order, values decoded from JSON; media and
            tables are the dicts W&B stores (``_type``, ``path`` relative to ``files/``...).
            ``_step`` holds W&B's own step.
        summary: the run summary as W&B keeps it: the last logged value of every key, except
            keys with a ``define_metric(summary=...)``, which hold ``{"min": ..., "max": ...}``.
        config: the run config, values decoded from JSON.
        metrics: ``define_metric`` declarations by name (or glob), as dicts.
        files: every file under the run's ``files/`` folder (media, tables, requirements...).
        finished: whether the log holds the run's exit record. W&B's writer may still be
            flushing for a moment after ``wandb.finish()`` returns; see :func:`wait_for_run`.
        problem: why reading stopped early (``read_run(..., partial=True)`` only), else None.
    """

    path: Path
    run_id: str = ""
    name: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    finished: bool = False
    problem: str | None = None

    def scalars(self, key: str) -> list[tuple[int | None, float]]:
        """``(trainer/global_step or _step, value)`` of every history row that logged ``key``."""
        out = []
        for row in self.history:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                step = row.get("trainer/global_step", row.get("_step"))
                out.append((None if step is None else int(step), float(value)))
        return out

    def media(self, key: str) -> list[Path]:
        """Files of an image or table key, in the order they were logged."""
        paths = []
        for row in self.history:
            value = row.get(key)
            if isinstance(value, dict) and "path" in value:
                paths.append(self.path / "files" / value["path"])
        return paths

    def table(self, key: str, index: int = -1) -> dict[str, Any]:
        """The ``index``-th logged table of ``key`` as ``{"columns": [...], "data": [[...]]}``."""
        paths = self.media(key)
        if not paths:
            raise KeyError(f"No table logged under {key!r} in {self.path}.")
        return json.loads(paths[index].read_text())


def find_offline_runs(root: str | Path) -> list[Path]:
    """Offline run directories under ``root`` (a ``save_dir``, its ``wandb/`` or a run), sorted."""
    root = Path(root)
    if list(root.glob("run-*.wandb")):
        return [root]
    return sorted(p.parent for p in root.glob("**/offline-run-*/run-*.wandb"))


def read_run(run_dir: str | Path, *, partial: bool = False) -> OfflineRun:
    """Reads one offline run directory (the folder holding ``run-<id>.wandb``).

    Args:
        run_dir: the run's folder.
        partial: on a damaged log, keep the records before the damage and say why in
            ``problem`` instead of raising.

    Raises:
        FileNotFoundError: if the folder holds no ``.wandb`` file.
        LogError: if the file is not a W&B log, or (unless ``partial``) is damaged or ends
            inside a record.
    """
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"No run-*.wandb file in {run_dir}: is it an offline run folder?")
    # W&B's writer goes on flushing for a moment after wandb.finish() returns: a log written
    # in the last seconds that is cut inside a record or lacks its exit record is read again
    # until it is whole (at most _FRESH_WAIT seconds); an older log is taken as it is.
    deadline = time.monotonic() + _FRESH_WAIT
    while True:
        fresh = time.time() - logs[0].stat().st_mtime < _FRESH_AGE
        try:
            run = _read_log(run_dir, logs[0], partial=partial and not fresh)
        except LogError:
            if not fresh or time.monotonic() > deadline:
                if partial:
                    return _read_log(run_dir, logs[0], partial=True)
                raise
            time.sleep(0.2)
            continue
        if run.finished or not fresh or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read_log(run_dir: Path, log: Path, *, partial: bool) -> OfflineRun:
    run = OfflineRun(path=run_dir)
    try:
        for offset, record in _records(log):
            try:
                _add(run, record)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise LogError(log, f"corrupt at byte {offset} (value: {error})", offset) from None
    except LogError as error:
        if not partial or error.offset is None:  # no offset: not a W&B log at all
            raise
        run.problem = str(error)
    # W&B's default summary is the last value of each key; explicit updates were merged above.
    last: dict[str, Any] = {}
    for row in run.history:
        last.update(row)
    run.summary = {**last, **run.summary}
    files = run_dir / "files"
    run.files = sorted(p for p in files.rglob("*") if p.is_file()) if files.is_dir() else []
    return run


def _add(run: OfflineRun, record: pb.Record) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "history":
        run.history.append(_items(record.history.item))
    elif kind == "summary":
        run.summary.update(_items(record.summary.update))
    elif kind == "config":
        for item in record.config.update:
            run.config[_key(item)] = json.loads(item.value_json)
    elif kind == "run":
        run.run_id = record.run.run_id
        run.name = record.run.display_name
        for item in record.run.config.update:
            run.config[_key(item)] = json.loads(item.value_json)
    elif kind == "exit":
        run.finished = True
    elif kind == "metric":
        metric = record.metric
        name = metric.name or metric.glob_name
        run.metrics[name] = {
            "step_metric": metric.step_metric,
            "summary": [k for k in ("min", "max", "mean", "last", "best") if _flag(metric, k)],
            "goal": metric.goal,
            "hidden": bool(metric.options.hidden),
        }


def wait_for_run(run_dir: str | Path, timeout: float = 30.0) -> OfflineRun:
    """Reads a run that has just finished, once its log is whole and holds the exit record.

    Raises:
        TimeoutError: if that has not happened after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = read_run(run_dir)
            if run.finished:
                return run
            why = "no exit record"
        except LogError as error:  # the writer may be between two chunks of a record
            why = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir}: {why} after {timeout} s; is the run live?")
        time.sleep(0.1)


def iter_records(path: str | Path) -> Iterator[pb.Record]:
    """Yields the ``Record`` protobufs of a ``.wandb`` file, in order.

    Raises:
        LogError: if the file does not start with the W&B header, or at the first chunk whose
            checksum, length or type is wrong, whose record does not decode, or that the
            file ends inside of (``offset``: the byte where that chunk or record starts).
    """
    for _offset, record in _records(path):
        yield record


def _records(path: str | Path) -> Iterator[tuple[int, pb.Record]]:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise LogError(path, "not a W&B log (too short)")
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise LogError(path, f"not a W&B log (header {data[:7]!r})")
    for offset, payload in _payloads(data, path):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError as error:
            raise LogError(path, f"corrupt at byte {offset} (record: {error})", offset) from None
        yield offset, record


def _payloads(data: bytes, path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(offset of its first chunk, payload)`` of every record, checksums verified."""

    def corrupt(at: int, why: str) -> LogError:
        return LogError(path, f"corrupt at byte {at} ({why})", at)

    offset = _FILE_HEADER.size
    pieces: list[bytes] = []
    start = offset  # where the record being assembled began
    while offset < len(data):
        room = _BLOCK - offset % _BLOCK
        if room < _CHUNK_HEADER.size:  # a block's tail too short for a header: zero padding
            if data[offset : offset + room].strip(b"\0"):
                raise corrupt(offset, "non-zero block trailer")
            offset += room
            continue
        if offset + _CHUNK_HEADER.size > len(data):
            raise corrupt(offset, "the log ends inside a chunk header: cut short or still open")
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, offset)
        body = offset + _CHUNK_HEADER.size
        if kind == 0 and length == 0 and checksum == 0:  # zero padding
            offset = body
            continue
        if length > room - _CHUNK_HEADER.size:
            raise corrupt(offset, f"chunk length {length} runs past its 32 KiB block")
        if body + length > len(data):
            raise corrupt(offset, "the log ends inside a record: cut short or still open")
        piece = data[body : body + length]
        if kind not in _TYPE_CRC:
            raise corrupt(offset, f"unknown chunk type {kind}")
        if zlib.crc32(piece, _TYPE_CRC[kind]) != checksum:
            raise corrupt(offset, "chunk checksum mismatch")
        if (kind in (_FULL, _FIRST)) == bool(pieces):
            raise corrupt(offset, "chunk out of sequence")
        if kind == _FULL:
            yield offset, piece
        elif kind == _FIRST:
            pieces, start = [piece], offset
        elif kind == _MIDDLE:
            pieces.append(piece)
        else:
            pieces.append(piece)
            yield start, b"".join(pieces)
            pieces = []
        offset = body + length
    if pieces:
        raise corrupt(start, "the log ends inside a record: cut short or still open")


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _items(items: Any) -> dict[str, Any]:
    # Media and tables arrive flattened as nested keys (["img", "path"], ...): nest them back
    # so that row["img"] is the dict W&B logged. Metric names with "/" use plain keys.
    out: dict[str, Any] = {}
    for item in items:
        value = json.loads(item.value_json)
        parts = list(item.nested_key) or [item.key]
        target = out
        for part in parts[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[parts[-1]] = value
    return out


def _flag(metric: Any, name: str) -> bool:
    return bool(getattr(metric.summary, name, False))
