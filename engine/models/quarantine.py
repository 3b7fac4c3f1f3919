"""Quarantine: a model version that crashed onnxruntime in a job, on its retry too, serves nothing more.

A job whose run kills its worker (the process died: ``worker_lost``) or trips a per-call limit of the runtime
(``model_memory_limit``, ``model_time_limit``) on its last attempt quarantines the model version it ran: the
worker writes ``quarantine.json`` beside the version's files. Every route that would run the version answers
409 ``model_quarantined`` with that record until an operator clears it (``DELETE
/v1/models/{name}/quarantine``). The record lives in the model store, not in Redis, so predictions check it
without Redis and it outlives every job. Example::

    place(model.path, Quarantine(code="worker_lost", job="explain-…", since=utc_now(), message="…"))
    check_runnable(model)  # raises Conflict(model_quarantined)
    clear(model.path)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import Conflict
from engine.files import write_atomic
from engine.models.store import ModelVersion

FILE = "quarantine.json"
CODE = "model_quarantined"


@dataclass(frozen=True)
class Quarantine:
    """Why a version is quarantined.

    Args:
        code: The code of the job failure that quarantined it (``worker_lost``, ``model_memory_limit``, ...).
        job: The id of that job.
        since: When (RFC 3339, UTC).
        message: What the failure said.
    """

    code: str
    job: str
    since: str
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as stored and shown (with ``state: quarantined``)."""
        return {"state": "quarantined", **asdict(self)}


def read(directory: Path) -> Quarantine | None:
    """Return the quarantine of the version stored in ``directory``, or ``None``; an unreadable record counts."""
    try:
        with open(os.path.join(directory, FILE), encoding="utf-8") as file:  # every run asks: no pathlib join
            raw = json.loads(file.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Half-readable is still quarantined: only the operator's clear lets the version run again.
        return Quarantine(code="unknown", job="", since="", message="the quarantine record is unreadable")
    if not isinstance(raw, dict):
        raw = {}
    return Quarantine(
        code=str(raw.get("code", "unknown")),
        job=str(raw.get("job", "")),
        since=str(raw.get("since", "")),
        message=str(raw.get("message", "")),
    )


def place(directory: Path, record: Quarantine) -> bool:
    """Quarantine the version in ``directory``; ``False`` when it no longer exists (deleted meanwhile)."""
    if not directory.is_dir():
        return False
    write_atomic(directory / FILE, json.dumps(record.to_dict()))
    return True


def clear(directory: Path) -> Quarantine | None:
    """Lift the quarantine of the version in ``directory``; return the record it had (``None``: none)."""
    found = read(directory)
    (directory / FILE).unlink(missing_ok=True)
    return found


def check_runnable(model: ModelVersion) -> None:
    """Refuse to run a quarantined version.

    Raises:
        Conflict: ``model_quarantined``, naming what quarantined it and how an operator clears it.
    """
    found = read(model.path)
    if found is not None:
        raise Conflict(
            f"model {model.name!r} version {model.version} is quarantined since {found.since or 'unknown'}: job "
            f"{found.job or 'unknown'} ended {found.code} on its last attempt. An operator clears it with "
            f"DELETE /v1/models/{model.name}/quarantine?version={model.version}",
            code=CODE,
        )
