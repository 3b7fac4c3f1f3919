"""An audit's dataset: reading an upload and checking every cell against the model card.

:func:`read_table` parses CSV, Parquet or JSON Lines, told apart by content (never by file name);
:func:`check_dataset` finds every unusable cell in one vectorised pass per column and returns the rows to store:
``row`` (the row's number in the upload, from 0), ``value.<f>`` per model feature (category names for
categoricals), ``label`` and ``sensitive.<name>``. Bad cells name their row, e.g. ``dataset[17].age``. Example::

    checked = check_dataset(read_table(upload), model.card, label="y", sensitive=["sex"])
    if checked.bad_rows:
        raise bad_rows_error(checked)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InvalidRequest
from engine.models.card import ModelCard

_LISTED = 100  # bad cells kept for the error listing; all are counted
_Mask = np.ndarray[Any, Any]


@dataclass(frozen=True)
class BadCell:
    """One dataset cell that cannot be used."""

    row: int
    column: str
    code: str
    detail: str
    where: str = "dataset"

    @property
    def field(self) -> str:
        """JSON-path name of the cell, e.g. ``dataset[17].age``."""
        return f"{self.where}[{self.row}].{self.column}"


@dataclass
class CheckedDataset:
    """The rows to store, and what was wrong with the upload."""

    rows: pd.DataFrame
    uploaded_rows: int
    bad_rows: int = 0
    bad_cells: int = 0
    listed: list[BadCell] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    label_encoding: str | None = None
    """How classification labels were written: ``names``, ``indices`` (0 … k−1) or ``booleans``."""


def read_table(data: bytes, *, where: str = "dataset") -> pd.DataFrame:
    """Parse CSV, Parquet or JSON Lines, recognised by content (Parquet's magic, a leading ``{``).

    Raises:
        InvalidRequest: ``empty_input`` or ``invalid_dataset``.
    """
    head = data.lstrip()[:1]
    if not head:
        raise InvalidRequest(f"{where} is empty", code="empty_input", field=where)
    kind = "parquet" if data[:4] == b"PAR1" else "jsonl" if head == b"{" else "csv"
    try:
        if kind == "parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        elif kind == "jsonl":
            frame = pd.DataFrame.from_records([json.loads(line) for line in data.splitlines() if line.strip()])
        else:
            frame = pd.read_csv(io.BytesIO(data))
    except Exception as exc:  # the parsers raise many unrelated types
        raise InvalidRequest(f"{where} is not readable {kind}: {exc}", code="invalid_dataset", field=where) from exc
    return as_table(frame, where=where)


def as_table(data: pd.DataFrame | list[Any], *, where: str = "rows") -> pd.DataFrame:
    """Return a table (or JSON rows: objects keyed by column) with rows and string column names.

    Raises:
        InvalidRequest: ``invalid_instances``, ``empty_input`` or ``invalid_dataset``.
    """
    if not isinstance(data, pd.DataFrame | list):
        raise InvalidRequest(
            f"{where} must be a list of objects keyed by column", code="invalid_instances", field=where
        )
    if isinstance(data, list):
        if not all(isinstance(r, dict) for r in data):
            raise InvalidRequest(f"{where} must be objects keyed by column", code="invalid_instances", field=where)
        data = pd.DataFrame.from_records(data)
    if len(data) == 0:
        raise InvalidRequest(f"{where} has no rows", code="empty_input", field=where)
    if not all(isinstance(c, str) for c in data.columns):
        raise InvalidRequest(f"{where} needs a header of column names", code="invalid_dataset", field=where)
    return data.reset_index(drop=True)


def check_dataset(
    frame: pd.DataFrame, card: ModelCard, *, label: str | None, sensitive: list[str], where: str = "dataset"
) -> CheckedDataset:
    """Check every cell, keep the good rows and list the bad ones (the columns must already exist).

    Args:
        frame: The uploaded table.
        card: The model card: feature types and categories, class names.
        label: Ground-truth column: class names (classification) or numbers (regression); may be missing.
        sensitive: Sensitive columns, stored as text (any value, or missing, is a group).
        where: Name of the dataset in error fields.
    """
    n = len(frame)
    label_encoding = None
    cells: list[tuple[_Mask, str, str, str]] = []  # (rows, column, code, what is wrong)
    out: dict[str, Any] = {"row": np.arange(n, dtype=np.int64)}
    for feature in card.features:
        column = frame[feature.name]
        missing = column.isna().to_numpy(bool)
        cells.append((missing, feature.name, "missing_value", "is missing"))
        if feature.type == "categorical":
            text = column.astype("string")
            known = text.isin(list(feature.categories)).to_numpy(bool)
            what = f"is not one of {list(feature.categories)}"
            cells.append((~known & ~missing, feature.name, "unknown_category", what))
            out[f"value.{feature.name}"] = text.astype(object).where(known, None)
            continue
        numbers = _numbers(column)
        cells.append((np.isnan(numbers) & ~missing, feature.name, "not_numeric", "is not a number"))
        cells.append((np.isinf(numbers), feature.name, "non_finite", "is not finite"))
        out[f"value.{feature.name}"] = numbers
    if label is not None:
        present = frame[label].notna().to_numpy(bool)
        if card.task == "regression":
            labels: Any = _numbers(frame[label])
            cells.append((present & ~np.isfinite(labels), label, "unknown_label", "is not a finite number"))
        else:
            labels, label_encoding = _class_labels(frame[label], list(card.class_names))
            wrong = present & labels.isna().to_numpy(bool)
            k = len(card.class_names)
            what = f"is not one of the classes {list(card.class_names)}, nor a class index 0 … {k - 1}"
            cells.append((wrong, label, "unknown_label", what + (", nor true/false" if k == 2 else "")))
        out["label"] = labels
    for name in sensitive:
        out[f"sensitive.{name}"] = _as_text(frame[name])
    bad = np.zeros(n, dtype=bool)
    listed: list[BadCell] = []
    order = {name: j for j, name in enumerate(frame.columns)}
    for mask, name, code, what in cells:
        bad |= mask
        for i in np.flatnonzero(mask)[:_LISTED]:  # each column's first cells include the first overall
            listed.append(BadCell(int(i), name, code, f"{_as_written(frame[name].iloc[int(i)])} {what}", where))
    listed.sort(key=lambda c: (c.row, order[c.column]))
    used = {*card.feature_names, *sensitive, *([label] if label else [])}
    return CheckedDataset(
        rows=pd.DataFrame(out)[~bad].reset_index(drop=True),
        uploaded_rows=n,
        bad_rows=int(bad.sum()),
        bad_cells=sum(int(mask.sum()) for mask, *_ in cells),
        listed=listed[:_LISTED],
        ignored_columns=[str(c) for c in frame.columns if c not in used],
        label_encoding=label_encoding if label is not None and card.task != "regression" else None,
    )


def bad_rows_error(checked: CheckedDataset) -> InvalidRequest:
    """The 422 for an upload with bad cells: the first one's code and field, the first ten in the detail."""
    first = checked.listed[0]
    shown = "; ".join(f"{c.field}: {c.detail}" for c in checked.listed[:10])
    more = f"; … ({checked.bad_cells - 10} more cells)" if checked.bad_cells > 10 else ""
    detail = f"{checked.bad_rows} of {checked.uploaded_rows} rows have bad values: {shown}{more}"
    return InvalidRequest(detail + ' (send on_bad_rows: "skip" to leave them out)', code=first.code, field=first.field)


def _class_labels(column: pd.Series, classes: list[str]) -> tuple[pd.Series, str]:
    """Map a label column to class names, however the user kept them.

    Class names win; else class indices ``0 … k−1`` (how scikit-learn users keep
    labels); else, for two classes, booleans (``false`` → the first class).

    Returns:
        The class name of each row (``None`` where missing or not a class), and
        the encoding that was used.
    """
    text = _as_text(column)
    present = text.notna()
    if text[present].isin(classes).all():
        return text, "names"
    indices = {str(i): name for i, name in enumerate(classes)}
    as_index = text.map(indices)
    booleans = {"true": classes[-1], "false": classes[0]} if len(classes) == 2 else {}
    as_bool = text.map(lambda v: None if v is None else booleans.get(str(v).lower()))
    # Whichever reading explains the most cells; names on a tie, so a typo is reported against the names.
    best = max(
        [(int(text.isin(classes).sum()), "names", text.where(text.isin(classes), None)),
         (int(as_index.notna().sum()), "indices", as_index),
         (int(as_bool.notna().sum()), "booleans", as_bool)],
        key=lambda option: option[0],
    )  # fmt: skip
    return best[2].astype(object).where(best[2].notna(), None), best[1]


def _as_written(value: Any) -> str:
    """Quote a cell as the user wrote it: ``1`` or ``'x'``, never ``np.int64(1)``."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _numbers(column: pd.Series) -> np.ndarray[Any, Any]:
    """Numeric values as floats; NaN where a value is missing or not a number (booleans are not numbers)."""
    if pd.api.types.is_bool_dtype(column):
        return np.full(len(column), np.nan)
    if column.dtype == object:
        column = column.map(lambda v: None if isinstance(v, bool) else v)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _as_text(column: pd.Series) -> pd.Series:
    # Integral floats (a CSV column with a gap) read as "1", not "1.0", so groups and labels match their names.
    if pd.api.types.is_float_dtype(column) and bool((column.dropna() % 1 == 0).all()):
        column = column.astype("Int64")
    return column.astype("string").astype(object).where(column.notna(), None)
