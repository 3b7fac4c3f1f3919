"""The model store: versioned, content-addressed, written atomically.

Layout under the store root (so a repository can be prepared by hand)::

    name/version/model.onnx        the graph, exactly as uploaded
    name/version/card.json         the model card
    name/version/background.parquet  optional reference rows (feature columns)
    name/version/meta.json         sha256, signature, created time (written by us)
    name/version/variants/KIND/    quantized variants (model.onnx, state.json)

A version directory is assembled in ``.tmp/`` and renamed into place, so a
reader sees a whole version or none, and a failed upload leaves nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.arrays import FloatArray
from engine.errors import InvalidRequest, NotFound, OnnxplainError
from engine.files import settled, write_atomic
from engine.models.card import NAME_PATTERN, ModelCard
from engine.models.probe import probe_model
from engine.models.rows import frame_to_matrix, matrix_to_frame
from engine.models.screening import Signature, screen_model
from engine.settings import Settings
from engine.timestamps import utc_now

log = logging.getLogger(__name__)
_BACKGROUND_CACHE = 16


@dataclass(frozen=True)
class ModelVersion:
    """One stored version of a model."""

    name: str
    version: int
    sha256: str
    created: str
    card: ModelCard
    signature: Signature
    path: Path
    background_rows: int
    background_sha256: str | None

    @property
    def model_path(self) -> Path:
        """Path of the fp32 ONNX file."""
        return self.path / "model.onnx"

    def to_dict(self) -> dict[str, Any]:
        """Return the model resource as JSON."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "created": self.created,
            "card": self.card.to_dict(),
            "signature": self.signature.to_dict(),
            "background": {"rows": self.background_rows, "sha256": self.background_sha256},
        }


class ModelRegistry:
    """Reads and writes the model store.

    Args:
        settings: Supplies the store root, caps and probe limits.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.model_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = str(self.root)  # per-request paths are joined as text: pathlib's joins cost more
        self._cache: dict[tuple[str, int], tuple[float, ModelVersion]] = {}
        # name → (the name directory's (inode, mtime), its sealed versions, its version directories not sealed)
        self._listings: dict[str, tuple[tuple[int, int], list[int], list[Path]]] = {}
        self._backgrounds: dict[tuple[str, str], FloatArray] = {}

    # -- writing -----------------------------------------------------------

    def register(
        self,
        model: bytes,
        card: ModelCard,
        background: bytes | None = None,
        background_format: str = "csv",
        tokenizer: bytes | None = None,
    ) -> ModelVersion:
        """Validate an upload and store it as the next version of its name.

        Args:
            model: The ONNX file's bytes.
            card: The validated model card.
            background: Optional CSV or Parquet bytes of reference rows.
            background_format: ``csv`` or ``parquet``.
            tokenizer: The ``tokenizers`` JSON of a token-id text model (its card names the file).

        Returns:
            The stored version.

        Raises:
            ModelRejected: The model is unsafe or does not match its card.
            InvalidRequest: The background does not match the features.
        """
        _, signature = screen_model(model, card)
        self._check_tokenizer(card, tokenizer)
        frame = self._read_background(background, background_format, card) if background is not None else None
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        try:
            (tmp / "model.onnx").write_bytes(model)
            (tmp / "card.json").write_text(json.dumps(card.to_dict(), indent=2))
            if frame is not None:
                frame.to_parquet(tmp / "background.parquet", index=False)
            if tokenizer is not None and card.text is not None and card.text.tokenizer is not None:
                # The card's name is a plain file name (TextSpec checks it), so this stays in the version directory.
                (tmp / card.text.tokenizer).write_bytes(tokenizer)
            self._probe_and_seal(tmp, model, card, signature)
            return self._place(tmp, card.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _check_tokenizer(self, card: ModelCard, tokenizer: bytes | None) -> None:
        declared = card.text.tokenizer if card.text is not None else None
        if declared is None and tokenizer is not None:
            raise InvalidRequest(
                "a tokenizer part needs a token-id text card (card.text.tokenizer names its file)",
                code="invalid_card",
                field="card.text.tokenizer",
            )
        if declared is not None and tokenizer is None:
            raise InvalidRequest(
                f"the card declares tokenizer {declared!r}: send it in part 'tokenizer'",
                code="missing_field",
                field="tokenizer",
            )
        if tokenizer is not None:
            from engine.models.text import screen_tokenizer

            screen_tokenizer(tokenizer, max_bytes=self.settings.max_tokenizer_bytes)

    def _read_background(self, data: bytes, fmt: str, card: ModelCard) -> pd.DataFrame:
        try:
            frame = pd.read_parquet(io.BytesIO(data)) if fmt == "parquet" else pd.read_csv(io.BytesIO(data))
        except Exception as exc:  # pandas/pyarrow raise many parser errors
            raise InvalidRequest(
                f"background is not readable {fmt}: {exc}", code="invalid_background", field="background"
            ) from exc
        if len(frame) == 0:
            raise InvalidRequest("background has no rows", code="invalid_background", field="background")
        if len(frame) > self.settings.max_background_rows:
            raise InvalidRequest(
                f"background has {len(frame)} rows, more than {self.settings.max_background_rows}",
                code="invalid_background",
                field="background",
            )
        if card.input_kind == "text":
            raise InvalidRequest(
                "text models take no background (their methods remove words)",
                code="invalid_background",
                field="background",
            )
        if card.image is not None:
            return _pixels(frame, card.background_columns)
        unknown = [str(c) for c in frame.columns if c not in card.feature_names]
        if unknown:
            raise InvalidRequest(
                f"background column {unknown[0]!r} is not a feature", code="unknown_field", field="background"
            )
        return matrix_to_frame(frame_to_matrix(frame, card, where="background"), card)

    def _write_meta(self, directory: Path, model: bytes, signature: Signature) -> None:
        background = directory / "background.parquet"
        meta = {
            "sha256": hashlib.sha256(model).hexdigest(),
            "created": utc_now(),
            "signature": signature.to_dict(),
            "background_rows": len(pd.read_parquet(background)) if background.exists() else 0,
            "background_sha256": hashlib.sha256(background.read_bytes()).hexdigest() if background.exists() else None,
        }
        write_atomic(directory / "meta.json", json.dumps(meta, indent=2))

    @contextlib.contextmanager
    def _numbering(self, name: str) -> Any:
        """Hold the lock of ``name``'s version numbers; yield its high-water mark file."""
        marks = self.root / ".versions"
        marks.mkdir(parents=True, exist_ok=True)
        with open(marks / f"{name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield marks / name
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _high_water(mark: Path) -> int:
        try:
            return int(mark.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _raise_mark(self, mark: Path, version: int) -> None:
        if version > self._high_water(mark):
            write_atomic(mark, str(version))

    def _place(self, tmp: Path, name: str) -> ModelVersion:
        target_dir = self.root / name
        # Versions are immutable: a number once used (even if deleted since) is never given again, so
        # ``version: 3`` always means the same sha256. The mark lives outside the name's directory, which a
        # delete of the last version removes.
        with self._numbering(name) as mark:
            target_dir.mkdir(exist_ok=True)
            for _ in range(100):
                # Numbered past every directory, sealed or not, so a hand-copied version is never overwritten.
                on_disk = max((int(p.name) for p in target_dir.iterdir() if p.name.isdigit()), default=0)
                version = max(on_disk, self._high_water(mark)) + 1
                try:
                    # rename() onto a missing path is atomic; another host's upload that took this number
                    # makes it fail, and we take the next.
                    os.rename(tmp, target_dir / str(version))
                except OSError:
                    continue
                self._raise_mark(mark, version)
                return self.get(name, version)
        raise InvalidRequest("could not allocate a version number", code="version_conflict")

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Delete one version, or every version, of a model.

        Returns:
            The deleted version numbers.

        Raises:
            NotFound: ``model_not_found`` or ``version_not_found``.
        """
        versions = [self.get(name, version).version] if version is not None else self.versions(name)
        if not versions:
            raise NotFound(f"no model named {name!r}", code="model_not_found", field="name")
        trash = self.root / ".trash"
        trash.mkdir(exist_ok=True)
        with self._numbering(name) as mark:
            self._raise_mark(mark, max(versions))
            for v in versions:
                moved = trash / uuid.uuid4().hex
                os.rename(self.root / name / str(v), moved)
                shutil.rmtree(moved, ignore_errors=True)
            if not self.versions(name):
                shutil.rmtree(self.root / name, ignore_errors=True)
        return versions

    # -- reading -----------------------------------------------------------

    def names(self) -> list[str]:
        """Return every model name that has at least one version, sorted."""
        if not self.root.exists():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name) and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        """Return the version numbers of ``name``, ascending.

        Every request resolves a model through this, so the listing is kept while the name directory's stat
        is unchanged and settled (:func:`engine.files.settled`): adding or removing a version renames or
        creates a directory in it, which changes its mtime; sealing writes inside the version directory, so
        the directories not yet sealed are checked again each time (usually none).
        """
        if not NAME_PATTERN.match(name):
            return []
        directory = os.path.join(self._root_text, name)
        try:
            status = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if not stat.S_ISDIR(status.st_mode):
            return []
        stamp = (status.st_ino, status.st_mtime_ns)
        listed = self._listings.get(name)
        if listed is not None and listed[0] == stamp and not any(_sealed(p) for p in listed[2]):
            return list(listed[1])
        numbered = [p for p in Path(directory).iterdir() if p.name.isdigit()]
        sealed = {p: _sealed(p) for p in numbered}
        found = sorted(int(p.name) for p, ok in sealed.items() if ok)
        if settled(status):
            self._listings[name] = (stamp, found, [p for p, ok in sealed.items() if not ok])
        return list(found)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """Return one version (the latest when ``version`` is ``None``).

        Raises:
            NotFound: ``model_not_found`` or ``version_not_found``.
        """
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no model named {name!r}", code="model_not_found", field="name")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise NotFound(f"model {name!r} has no version {version}", code="version_not_found", field="version")
        return self._load(name, version)

    def _load(self, name: str, version: int) -> ModelVersion:
        meta_path = os.path.join(self._root_text, name, str(version), "meta.json")
        stamp = os.stat(meta_path).st_mtime
        cached = self._cache.get((name, version))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        directory = self.root / name / str(version)
        meta = json.loads(Path(meta_path).read_text())
        card = ModelCard.from_dict(json.loads((directory / "card.json").read_text()), name=name)
        loaded = ModelVersion(
            name=name,
            version=version,
            sha256=meta["sha256"],
            created=meta["created"],
            card=card,
            signature=Signature.from_dict(meta["signature"]),
            path=directory,
            background_rows=int(meta["background_rows"]),
            background_sha256=meta["background_sha256"],
        )
        self._cache[(name, version)] = (stamp, loaded)
        return loaded

    def _adopt(self, directory: Path) -> None:
        """Screen a version deployed by copying files, and write its meta."""
        model = (directory / "model.onnx").read_bytes()
        card = ModelCard.from_dict(json.loads((directory / "card.json").read_text()), name=directory.parent.name)
        _, signature = screen_model(model, card)
        self._probe_and_seal(directory, model, card, signature)

    def _probe_and_seal(self, directory: Path, model: bytes, card: ModelCard, signature: Signature) -> None:
        """Load the model in the sandboxed child, then write the meta that makes the version servable."""
        probe_model(
            directory / "model.onnx",
            card,
            signature,
            timeout_s=self.settings.probe_timeout_s,
            memory_bytes=self.settings.probe_memory_bytes,
        )
        self._write_meta(directory, model, signature)

    def scan(self) -> dict[str, str]:
        """Adopt every hand-deployed version; return the ones rejected with why."""
        rejected: dict[str, str] = {}
        if not self.root.exists():
            return rejected
        # Only here are unsealed versions probed and sealed: reads (get, versions) never write to the store.
        for directory in sorted(self.root.glob("*/*")):
            name, version = directory.parent.name, directory.name
            if not (NAME_PATTERN.match(name) and version.isdigit() and (directory / "model.onnx").exists()):
                continue
            try:
                if not _sealed(directory):
                    self._adopt(directory)
                self.get(name, int(version))
            except (OnnxplainError, OSError, ValueError, KeyError) as exc:
                rejected[f"{name}/{version}"] = str(exc)
                log.warning("model %s/%s rejected at scan: %s", name, version, exc)
        return rejected

    def background(self, model: ModelVersion) -> FloatArray:
        """Return the stored background rows in raw feature space (``(0, d)`` when none)."""
        path = model.path / "background.parquet"
        if not path.exists():
            return np.empty((0, len(model.card.background_columns)), dtype=np.float64)
        # A version directory never changes its background or card, so a warm worker parses each once.
        key = (str(model.path), model.background_sha256 or "")
        found = self._backgrounds.get(key)
        if found is None:
            frame = pd.read_parquet(path)
            if model.card.image is not None:
                found = frame[model.card.background_columns].to_numpy(dtype=np.float64)
            else:
                found = frame_to_matrix(frame, model.card, where="background")
            found.flags.writeable = False
            if len(self._backgrounds) >= _BACKGROUND_CACHE:
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[key] = found
        return found


def _pixels(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Check an image background: exactly the pixel columns ``p0 …``, unit-scale numbers.

    Raises:
        InvalidRequest: ``invalid_background`` naming the column or row at fault.
    """
    if [str(c) for c in frame.columns] != columns:
        raise InvalidRequest(
            f"an image background has the {len(columns)} columns p0 … p{len(columns) - 1} "
            "(pixels in row-major height, width, channel order, in [0, 1])",
            code="invalid_background",
            field="background",
        )
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)).all(axis=1))
    if bad.size:
        raise InvalidRequest(
            f"background row {int(bad[0])} has a pixel that is not a number in [0, 1]",
            code="invalid_background",
            field=f"background[{int(bad[0])}]",
        )
    return pd.DataFrame(values, columns=columns)


def _sealed(directory: Path) -> bool:
    """Whether a version directory is servable: its model was probed and its meta written."""
    return (directory / "model.onnx").exists() and (directory / "meta.json").exists()
