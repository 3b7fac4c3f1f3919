"""The small shared pieces: one timestamp format, one atomic write."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from engine.files import atomic_path, write_atomic
from engine.timestamps import format_utc, parse_utc, utc_now

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_format_utc_writes_milliseconds_and_z_for_aware_naive_and_offset_times() -> None:
    aware = datetime(2026, 12, 1, 21, 30, 7, 123456, tzinfo=UTC)
    assert format_utc(aware) == "2026-12-01T21:30:07.123Z"
    assert format_utc(aware.replace(tzinfo=None)) == "2026-12-01T21:30:07.123Z"  # naive means UTC (RQ's times)
    assert format_utc(aware.astimezone(timezone(timedelta(hours=2)))) == "2026-12-01T21:30:07.123Z"
    assert STAMP.match(utc_now())


def test_parse_utc_reads_back_what_format_utc_wrote() -> None:
    moment = datetime(2026, 12, 1, 21, 30, 7, 123000, tzinfo=UTC)
    assert parse_utc(format_utc(moment)) == moment


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_keeps_the_old_content_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "rows.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]
