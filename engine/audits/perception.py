"""Audits of image and text models: uploads, per-row explanations with maps or words, summary and report.

Uploads (``POST /v1/audits``, part ``dataset``):

* **texts** — JSON Lines (or CSV/Parquet, or a JSON body's ``rows``): a ``text`` column beside the label and
  sensitive columns, as for tables;
* **images** — a zip holding the images (PNG or JPEG) and a ``labels.csv`` manifest at its root whose ``file``
  column names each row's member, beside the label and sensitive columns; or JSON Lines with an ``image`` column
  of base64 PNG/JPEG.

The zip is read defensively (:func:`read_image_zip`): member count and total uncompressed size are capped before
anything is inflated and again while reading (a member that inflates past its declared size is a bomb), names
must be plain relative paths (no ``..``, no absolute paths, no backslashes or drive letters), and symbolic links
and encrypted members are refused. Every image is decoded at submission with the card's guards (size, pixels),
so a bad one is a bad cell naming its row (``dataset[3].image``).

Each chunk explains its rows with the spec's method (the predicted class of each row): text rows keep their words
with offsets and attributions and the highlight; image rows keep their map (float16 JSON in the rows table) and
a heatmap file ``maps/<row>.png`` in the audit's directory. The summary adds, for texts, word importance per
predicted class across the dataset and, for both, how often the map beat random orders (faithfulness); the
report shows a contact sheet of the most and least confident rows.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
import stat
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.audits.dataset import BadCell, CheckedDataset, check_dataset, read_table
from engine.audits.spec import SPEC_FIELDS, AuditSpec, _optional_str, _positive, _thresholds
from engine.errors import InvalidRequest, PayloadTooLarge, UnknownField
from engine.models.store import ModelRegistry, ModelVersion
from engine.settings import Settings

MANIFEST = "labels.csv"
"""The zip member listing the rows: a ``file`` column plus label and sensitive columns."""
INPUT_COLUMNS = {"image": "image", "text": "text"}
"""The dataset column holding each row's input, by input kind."""
CONTACT_ROWS = 6
"""Rows of each end (most and least confident) in the report's contact sheet."""
TOP_WORDS = 15


def read_image_zip(data: bytes, *, max_files: int, max_bytes: int, where: str = "dataset") -> pd.DataFrame:
    """Read an image audit's zip into a table: the manifest's columns and ``image`` (base64 of each member).

    Raises:
        InvalidRequest: ``invalid_zip`` (unreadable, encrypted), ``too_many_files``, ``unsafe_path`` (traversal,
            absolute, link), ``missing_field`` (no ``labels.csv`` or no ``file`` column).
        PayloadTooLarge: ``zip_too_large`` when the members expand past ``max_bytes``.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidRequest(f"{where} is not a readable zip: {exc}", code="invalid_zip", field=where) from exc
    if len(members) > max_files:
        raise InvalidRequest(
            f"{where} has {len(members)} members, more than the limit of {max_files}",
            code="too_many_files",
            field=where,
        )
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise PayloadTooLarge(
            f"{where} expands to {declared:,} bytes, over the limit of {max_bytes:,}", code="zip_too_large", field=where
        )
    files: dict[str, zipfile.ZipInfo] = {}
    for member in members:
        name = member.filename
        _check_name(name, member, where)
        if not member.is_dir():
            files[name] = member
    if MANIFEST not in files:
        raise InvalidRequest(
            f"{where} has no {MANIFEST} at its root (a 'file' column naming each image, plus label and sensitive "
            "columns)",
            code="missing_field",
            field=f"{where}:{MANIFEST}",
        )
    budget = [max_bytes]
    manifest = read_table(_read(archive, files[MANIFEST], budget, where), where=f"{where}:{MANIFEST}")
    if "file" not in manifest.columns:
        raise InvalidRequest(
            f"{MANIFEST} has no 'file' column naming each row's image", code="missing_field", field=f"{where}:file"
        )
    images: list[str | None] = []
    for value in manifest["file"]:
        found = files.get(posixpath.normpath(str(value))) if isinstance(value, str) else None
        # A row naming no member keeps None: the dataset check lists it as a bad cell of its row.
        images.append(base64.b64encode(_read(archive, found, budget, where)).decode() if found else None)
    return manifest.assign(image=pd.Series(images, index=manifest.index, dtype=object))


def _check_name(name: str, member: zipfile.ZipInfo, where: str) -> None:
    parts = name.split("/")
    mode = member.external_attr >> 16
    if (
        name.startswith("/")
        or "\\" in name
        or ".." in parts
        or (len(name) > 1 and name[1] == ":")
        or "\x00" in name
        or stat.S_ISLNK(mode)
    ):
        raise InvalidRequest(
            f"{where} member {name!r} is not a plain relative path (absolute, '..', a drive or a link)",
            code="unsafe_path",
            field=where,
        )
    if member.flag_bits & 0x1:
        raise InvalidRequest(f"{where} member {name!r} is encrypted", code="invalid_zip", field=where)


def _read(archive: zipfile.ZipFile, member: zipfile.ZipInfo, budget: list[int], where: str) -> bytes:
    """One member's bytes, reading at most its declared size (plus one byte to catch a lying header)."""
    try:
        with archive.open(member) as handle:
            raw = handle.read(min(member.file_size, budget[0]) + 1)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:  # bad CRC, unknown compression
        raise InvalidRequest(f"{where} member {member.filename!r}: {exc}", code="invalid_zip", field=where) from exc
    if len(raw) > member.file_size or len(raw) > budget[0]:
        raise PayloadTooLarge(
            f"{where} member {member.filename!r} expands past its declared size or the limit",
            code="zip_too_large",
            field=where,
        )
    budget[0] -= len(raw)
    return raw


def prepare_perception_audit(
    body: Mapping[str, Any],
    frame: pd.DataFrame,
    model: ModelVersion,
    settings: Settings,
    *,
    variant: str,
    where: str = "dataset",
) -> tuple[AuditSpec, CheckedDataset]:
    """Validate an image or text audit (see :func:`engine.audits.spec.prepare_audit`), decoding every input.

    Returns:
        The :class:`~engine.audits.spec.AuditSpec` (``input_kind`` set, no features) and the checked rows
        (``row``, the input column, ``label``, ``sensitive.<name>``).
    """
    from engine.explain.plan import plan_explanation

    for key in body:
        if key not in SPEC_FIELDS:
            raise UnknownField(f"unknown field {key!r}", field=key)
    for key, what in (("variants", "a compression study"), ("recourse", "recourse")):
        # Both work on feature columns (per-feature attributions, counterfactual moves); maps and words have none.
        if body.get(key) not in (None, False):
            msg = f"{what} ({key}) is for tabular models, not {model.card.input_kind} ones"
            raise InvalidRequest(msg, code="invalid_parameter", field=key)
    if len(frame) > settings.max_audit_rows:
        msg = f"{len(frame)} rows is more than the limit of {settings.max_audit_rows}"
        raise InvalidRequest(msg, code="too_many_rows", field=where)
    card = model.card
    column = INPUT_COLUMNS[card.input_kind]
    label = _optional_str(body, "label")
    sensitive = body.get("sensitive", [])
    if not isinstance(sensitive, list) or not all(isinstance(s, str) for s in sensitive):
        raise InvalidRequest("sensitive must be a list of column names", code="invalid_parameter", field="sensitive")
    positive = _positive(body, card.task, list(card.class_names), sensitive)
    policy = body.get("on_bad_rows", "reject")
    if policy not in ("reject", "skip"):
        raise InvalidRequest(
            "on_bad_rows must be one of ['reject', 'skip']", code="invalid_parameter", field="on_bad_rows"
        )
    if column not in frame.columns:
        raise InvalidRequest(f"{where} has no {column!r} column", code="missing_feature", field=where)
    for i, name in enumerate([*([label] if label else []), *sensitive]):
        if name not in frame.columns:
            field = "label" if label and i == 0 else f"sensitive[{i - (1 if label else 0)}]"
            raise InvalidRequest(f"{where} has no column {name!r}", code="unknown_column", field=field)
    # Each row explains its predicted class: the per-class summaries need every class, not only the positive one.
    template = {k: body[k] for k in ("method", "parameters") if k in body} | {"targets": None}
    plan = plan_explanation(template, model, settings, variant, rows=1)
    spec = AuditSpec(
        title=_optional_str(body, "title") or f"Audit of {model.name} v{model.version}",
        task=card.task,
        features=[],
        label=label,
        sensitive=list(sensitive),
        positive=positive,
        on_bad_rows=str(policy),
        thresholds=_thresholds(body.get("thresholds")),
        request=plan.to_dict(),
        input_kind=card.input_kind,
    )
    inputs, cells = _check_inputs(frame[column], model, where, column)
    checked = check_dataset(frame, card, label=label, sensitive=spec.sensitive, where=where)
    bad_inputs = {cell.row for cell in cells}
    kept = checked.rows[~checked.rows["row"].isin(bad_inputs)].reset_index(drop=True)
    kept.insert(1, column, [inputs[int(r)] for r in kept["row"]])
    listed = sorted([*checked.listed, *cells], key=lambda c: (c.row, c.column))[:100]
    result = CheckedDataset(
        rows=kept,
        uploaded_rows=checked.uploaded_rows,
        bad_rows=len(frame) - len(kept),
        bad_cells=checked.bad_cells + len(cells),
        listed=listed,
        ignored_columns=[c for c in checked.ignored_columns if c not in (column, "file")],
        label_encoding=checked.label_encoding,
    )
    if spec.on_bad_rows == "skip" and len(kept) == 0:
        raise InvalidRequest(f"none of the {len(frame)} rows of {where} is valid", code="no_rows", field=where)
    return spec, result


def _check_inputs(values: pd.Series, model: ModelVersion, where: str, column: str) -> tuple[list[Any], list[BadCell]]:
    """Decode every image (the card's guards) or check every text; bad ones become cells of their rows."""
    card = model.card
    inputs: list[Any] = []
    cells: list[BadCell] = []
    for i, value in enumerate(values):
        field = f"{where}[{i}].{column}"
        try:
            if card.image is not None:
                if not isinstance(value, str):
                    raise InvalidRequest(
                        "names no image of the zip (or is not base64)", code="invalid_image", field=field
                    )
                card.image.decode(value, field)
                inputs.append(value)
            else:
                from engine.models.text import TextSpec, parse_texts

                inputs.append(parse_texts([value], card.text or TextSpec(), max_rows=1, where=field)[0])
        except InvalidRequest as exc:
            inputs.append(None)
            cells.append(BadCell(i, column, exc.code, exc.detail, where))
    return inputs, cells


def explain_perception_chunk(
    audit: Any,
    start: int,
    stop: int,
    registry: ModelRegistry,
    predictor: Any,
    *,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int], None],
) -> int:
    """Explain rows ``start..stop-1`` of an image or text audit and store their table (and heatmap files)."""
    from engine.explain.run import PerceptionExplanation, run_explanation
    from engine.models.image import pack_images

    spec = audit.spec
    frame = audit.read_dataset(start, stop)
    model = registry.get(spec.request["model"], int(spec.request["version"]))
    card = model.card
    column = INPUT_COLUMNS[card.input_kind]
    step = max(1, predictor.settings.max_explain_rows)
    if card.image is not None:
        step = max(1, min(step, predictor.settings.max_explain_pixels // (card.image.height * card.image.width)))
    maps = audit.path / "maps"
    maps.mkdir(exist_ok=True)
    parts, meta = [], {}
    for lo in range(0, len(frame), step):
        part = frame.iloc[lo : lo + step]
        values = part[column].tolist()
        rows: Any = values
        if card.image is not None:
            rows = pack_images(np.stack([card.image.decode(v, f"dataset.{column}") for v in values]))
        result = run_explanation(spec.explain_request(rows), registry, predictor, should_stop=should_stop)
        assert isinstance(result, PerceptionExplanation)  # a perception model's answer
        body = result.to_json()
        parts.append(_results(body, part, start + lo, spec, card.input_kind, maps))
        meta = {k: v for k, v in body.items() if k != "explanations"}
        on_progress(min(lo + step, len(frame)))
    audit.write_chunk(start, pd.concat(parts, ignore_index=True), meta)
    return len(frame)


def _results(body: dict[str, Any], part: pd.DataFrame, first: int, spec: Any, kind: str, maps: Any) -> pd.DataFrame:
    from engine.files import write_atomic

    records = []
    for i, (explanation, (_, row)) in enumerate(zip(body["explanations"], part.iterrows(), strict=True)):
        prediction, target = explanation["prediction"], explanation["targets"][0]
        scores = prediction.get("scores") or {}
        record: dict[str, Any] = {
            "row": first + i,
            "prediction": prediction.get("label", prediction.get("value")),
            # Fairness and AUC read the positive class's score; without one, the explained (predicted) output.
            "score": float(scores[spec.positive]) if spec.positive in scores else float(target["output_value"]),
            "confidence": float(target["output_value"]),
            "target": target["target"],
            "base_value": float(target.get("base_value", np.nan)),
            "better_than_random": bool(target["faithfulness"].get("better_than_random", False)),
            "deletion_auc": float(target["faithfulness"]["deletion"]["auc"]),
            "random_deletion_auc": float(target["faithfulness"]["deletion"]["random_auc"]),
        }
        if spec.label:
            record["label"] = row["label"]
        for name in spec.sensitive:
            record[f"sensitive.{name}"] = row[f"sensitive.{name}"]
        if kind == "text":
            record["text"] = row["text"]
            record["attributions"] = json.dumps(target["attributions"])
            record["highlight_html"] = target["highlight_html"]
        else:
            upload_row = int(row["row"])
            write_atomic(maps / f"{upload_row}.png", base64.b64decode(target["heatmap_png"]))
            record["map"] = json.dumps(target["map"])
            record["map_file"] = f"maps/{upload_row}.png"
        records.append(record)
    return pd.DataFrame.from_records(records).assign(status="ok", error=None)


def perception_summary(rows: pd.DataFrame, kind: str) -> dict[str, Any]:
    """What image and text audits add to the summary: faithfulness overall, and word importance per class (texts).

    ``word_importance``: per predicted class, the words (lower-cased) with the largest mean attribution toward
    that class over the rows predicting it, with how many times each occurred.
    """
    out: dict[str, Any] = {
        "input_kind": kind,
        "faithfulness": {
            "better_than_random": float(rows["better_than_random"].astype(bool).mean()) if len(rows) else None,
            "mean_deletion_auc": _mean(rows["deletion_auc"]),
            "mean_random_deletion_auc": _mean(rows["random_deletion_auc"]),
        },
    }
    if kind == "text":
        per_class: dict[str, list[dict[str, Any]]] = {}
        for cls, group in rows.groupby("target", sort=True):
            words: dict[str, list[float]] = {}
            for encoded in group["attributions"]:
                for item in json.loads(encoded):
                    words.setdefault(str(item["token"]).lower(), []).append(float(item["attribution"]))
            means = sorted(((-float(np.mean(v)), w, len(v)) for w, v in words.items()))
            per_class[str(cls)] = [{"word": w, "mean": -m, "count": c} for m, w, c in means[:TOP_WORDS]]
        out["word_importance"] = per_class
    return out


def _mean(values: pd.Series) -> float | None:
    numbers = values.astype(float)
    return float(numbers.mean()) if len(numbers) else None


def render_perception_report(
    summary: dict[str, Any], rows: pd.DataFrame, *, audit_path: Any, provenance: dict[str, Any], title: str
) -> str:
    """A self-contained HTML report: the summary, word tables (texts) and the contact sheet of the ends."""
    kind = summary.get("input_kind", "image")
    e = html.escape
    ordered = rows.sort_values("confidence", ascending=False, kind="stable")
    ends = [("Most confident", ordered.head(CONTACT_ROWS)), ("Least confident", ordered.tail(CONTACT_ROWS)[::-1])]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px}.sheet{display:flex;flex-wrap:wrap;gap:12px}.cell{width:180px;font-size:12px}"
        ".cell img{width:176px;image-rendering:pixelated}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{summary['rows']} rows; task {e(str(summary['task']))}; positive class "
        f"{e(str(summary.get('positive')))}.</p>",
    ]
    performance = summary.get("performance")
    if performance:
        parts.append(f"<p>Accuracy: {performance.get('accuracy')}</p>")
    faith = summary["faithfulness"]
    parts.append(
        "<h2>Faithfulness</h2><p>Maps better than random orders on "
        f"{_percent(faith['better_than_random'])} of rows; mean deletion AUC {faith['mean_deletion_auc']} "
        f"(random orders: {faith['mean_random_deletion_auc']}).</p>"
    )
    if kind == "text":
        parts.append("<h2>Word importance per predicted class</h2>")
        for cls, words in summary.get("word_importance", {}).items():
            parts.append(f"<h3>{e(cls)}</h3><table><tr><th>word</th><th>mean attribution</th><th>count</th></tr>")
            parts += [f"<tr><td>{e(w['word'])}</td><td>{w['mean']:.4g}</td><td>{w['count']}</td></tr>" for w in words]
            parts.append("</table>")
    parts.append("<h2>Contact sheet</h2>")
    for heading, group in ends:
        parts.append(f"<h3>{heading}</h3><div class='sheet'>")
        for _, row in group.iterrows():
            caption = f"row {int(row['row'])}: {e(str(row['prediction']))} ({row['confidence']:.3f})"
            if "label" in row and row.get("label") is not None:
                caption += f", label {e(str(row['label']))}"
            if kind == "text":
                # highlight_html escapes the text itself; it is our own markup.
                parts.append(f"<div class='cell' style='width:360px'>{caption}<br>{row['highlight_html']}</div>")
            else:
                png = (audit_path / str(row["map_file"])).read_bytes()
                data = base64.b64encode(png).decode()
                parts.append(
                    f"<div class='cell'><img alt='heatmap' src='data:image/png;base64,{data}'><br>{caption}</div>"
                )
        parts.append("</div>")
    fairness = summary.get("fairness")
    if fairness:
        parts.append(f"<h2>Fairness</h2><pre>{e(json.dumps(fairness, indent=1, default=str))}</pre>")
    parts.append(f"<h2>Provenance</h2><pre>{e(json.dumps(provenance, indent=1, default=str))}</pre></body></html>")
    return "".join(parts)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"
