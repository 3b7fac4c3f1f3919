"""Where an audit keeps its files, each written atomically (a temporary name, then a rename).

Layout under ``settings.audit_dir`` (shared by the API and every worker, like the model store)::

    <id>/spec.json          the validated spec (plus the model, row counts and chunk bounds)
    <id>/dataset.parquet    the validated rows: ``row``, ``value.<f>``, ``label``, ``sensitive.<name>``
    <id>/chunks/<start>.parquet   one chunk's per-row results; a retried chunk replaces its file
    <id>/rows.parquet       every row's results, merged
    <id>/summary.json       the summary (global importance, performance, fairness)
    <id>/report.html        the self-contained HTML report
    <id>/started.json       when the first chunk started
    <id>/state.json         how the audit ended (written last by the merge)
    <id>/variants/<kind>/   the compression study's files per variant (:mod:`engine.audits.compression`)
    <id>/canceled.json      written when the audit is canceled; it then stays canceled

An audit directory is assembled in ``.tmp/`` and renamed into place, so a reader sees a whole audit or none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.audits.spec import AuditSpec
from engine.errors import NotFound
from engine.files import atomic_path, write_atomic

_ID = re.compile(r"^[0-9a-f]{32}$")
_META_KEY = b"onnxplain"


class Audit:
    """One stored audit.

    Args:
        path: Its directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name
        self._info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        """The contents of ``spec.json``: ``spec``, ``model``, ``rows``, ``chunks``, ``created_at``, ..."""
        if self._info is None:
            self._info = json.loads((self.path / "spec.json").read_text())
        return self._info

    @property
    def spec(self) -> AuditSpec:
        """The validated spec."""
        return AuditSpec.from_dict(self.info["spec"])

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """The half-open row ranges of the chunks."""
        return [(int(a), int(b)) for a, b in self.info["chunks"]]

    def chunk_job(self, start: int) -> str:
        """The job id of the chunk starting at ``start`` (named here so that the API and workers agree)."""
        return f"audit-{self.id}-{start}"

    @property
    def merge_job(self) -> str:
        """The job id of the merge."""
        return f"audit-{self.id}-merge"

    @property
    def rows_path(self) -> Path:
        """The merged per-row table."""
        return self.path / "rows.parquet"

    @property
    def report_path(self) -> Path:
        """The HTML report."""
        return self.path / "report.html"

    def read_dataset(self, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Return dataset rows ``start..stop-1`` (positions), reading only the row groups that hold them."""
        source = pq.ParquetFile(self.path / "dataset.parquet")
        stop = source.metadata.num_rows if stop is None else stop
        groups, first, offset = [], None, 0
        for g in range(source.num_row_groups):
            size = source.metadata.row_group(g).num_rows
            if offset < stop and offset + size > start:
                groups.append(g)
                first = offset if first is None else first
            offset += size
        table = source.read_row_groups(groups) if groups else source.schema_arrow.empty_table()
        frame: pd.DataFrame = table.slice(start - (first or 0), max(0, stop - start)).to_pandas()
        return frame

    def write_chunk(self, start: int, rows: pd.DataFrame, meta: dict[str, Any]) -> None:
        """Store one chunk's per-row results (with ``meta`` in the file), replacing an earlier attempt's."""
        table = pa.Table.from_pandas(rows, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
        directory = self.path / "chunks"
        directory.mkdir(exist_ok=True)
        with atomic_path(directory / f"{start}.parquet") as tmp:
            pq.write_table(table, tmp)

    def has_chunk(self, start: int) -> bool:
        """Whether the chunk starting at ``start`` stored its results."""
        return (self.path / "chunks" / f"{start}.parquet").exists()

    def read_chunk(self, start: int) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """Return one chunk's results and meta, or ``None`` when it has none."""
        path = self.path / "chunks" / f"{start}.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        return table.to_pandas(), meta

    def write_outputs(self, rows: pd.DataFrame, summary: dict[str, Any] | None, report: str | None) -> None:
        """Store the merged rows, the summary and the report (``None`` skips one)."""
        with atomic_path(self.rows_path) as tmp:
            rows.to_parquet(tmp, index=False)
        if summary is not None:
            write_atomic(self.path / "summary.json", json.dumps(summary))
        if report is not None:
            write_atomic(self.report_path, report)

    def summary(self) -> dict[str, Any] | None:
        """The stored summary, once merged."""
        return _read_json(self.path / "summary.json")

    def state(self) -> dict[str, Any] | None:
        """How the audit ended (``state``, ``ended_at``, ...), or ``None`` while it runs."""
        return _read_json(self.path / "state.json")

    def set_state(self, state: dict[str, Any]) -> None:
        """Record how the audit ended."""
        write_atomic(self.path / "state.json", json.dumps(state))

    def started(self) -> str | None:
        """When the first chunk started (``None`` before)."""
        found = _read_json(self.path / "started.json")
        return str(found["started_at"]) if found else None

    def mark_started(self, when: str) -> None:
        """Record when the first chunk started; later calls keep the first time."""
        tmp = self.path / f".started.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"started_at": when}))
        try:
            # link() publishes a complete file and fails if one exists: exactly one chunk
            # creates it, and a reader never sees it half written.
            os.link(tmp, self.path / "started.json")
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def iter_rows(self, fmt: str, batch_rows: int = 10_000, *, path: Path | None = None) -> Iterator[bytes]:
        """Stream the merged rows (or another per-row table, ``path``) as ``csv`` or ``jsonl``, a batch at a time."""
        for i, batch in enumerate(pq.ParquetFile(path or self.rows_path).iter_batches(batch_size=batch_rows)):
            frame = batch.to_pandas()
            text = (
                frame.to_csv(index=False, header=i == 0)
                if fmt == "csv"
                else frame.to_json(orient="records", lines=True)
            )
            yield text.encode() if text.endswith("\n") else (text + "\n").encode()

    def canceled(self) -> dict[str, Any] | None:
        """The cancellation record, when the audit was canceled."""
        return _read_json(self.path / "canceled.json")

    def mark_canceled(self, record: dict[str, Any]) -> None:
        """Record that the audit was canceled; nothing clears it."""
        write_atomic(self.path / "canceled.json", json.dumps(record))


class AuditStore:
    """Creates and opens audits under one directory.

    Args:
        root: ``settings.audit_dir``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self, info: dict[str, Any], dataset: pd.DataFrame, *, row_group_rows: int) -> Audit:
        """Store a new audit: ``info`` becomes ``spec.json`` (with ``id`` added) beside the dataset.

        Args:
            info: JSON-ready description (``spec``, ``model``, ``chunks``, ...).
            dataset: The validated rows.
            row_group_rows: Parquet row-group size; the chunk size, so that a chunk reads one group.

        Returns:
            The audit, with a fresh random id.
        """
        audit_id = uuid.uuid4().hex
        tmp = self.root / ".tmp" / audit_id
        tmp.mkdir(parents=True)
        try:
            dataset.to_parquet(tmp / "dataset.parquet", index=False, row_group_size=max(1, row_group_rows))
            (tmp / "spec.json").write_text(json.dumps({**info, "id": audit_id}, indent=2))
            (tmp / "chunks").mkdir()
            os.rename(tmp, self.root / audit_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Audit(self.root / audit_id)

    def open(self, audit_id: str) -> Audit:
        """Return a stored audit.

        Raises:
            NotFound: ``audit_not_found`` (also for a malformed id, which is never used as a path).
        """
        path = self.root / audit_id
        if not _ID.match(audit_id) or not (path / "spec.json").exists():
            raise NotFound(f"no audit {audit_id!r}", code="audit_not_found", field="audit_id")
        return Audit(path)

    def delete(self, audit_id: str) -> None:
        """Remove an audit's files (used when its jobs could not be queued)."""
        shutil.rmtree(self.open(audit_id).path, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data
