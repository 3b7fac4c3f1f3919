"""Batch audit routes (``/v1/audits``): submit, progress and summary, cancel, per-row results, report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import UnsupportedMediaType

from engine.audits.dataset import CheckedDataset, as_table, bad_rows_error, read_table
from engine.audits.perception import prepare_perception_audit, read_image_zip
from engine.audits.spec import SPEC_FIELDS, prepare_audit
from engine.audits.store import Audit
from engine.audits.study import rows_path
from engine.errors import InvalidRequest, NotFound, UnknownField
from engine.webhooks import accept_callback
from service.auth import runnable_model, tenant
from service.bodies import check_object, check_parts, json_object, json_part, optional_int
from service.errors import problem_of, respond
from service.extensions import services
from service.gateways.audits import AuditGateway
from service.gateways.jobs import check_idempotency_key
from service.observe import AUDITS_SUBMITTED

bp = Blueprint("audits", __name__)

_PARTS = {"dataset", "spec"}
_FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/x-ndjson"}


@bp.post("/v1/audits")
def submit_audit() -> tuple[Response, int, dict[str, str]] | Response:
    """Validate a dataset and spec, store them and queue the audit: 202 with the audit.

    Multipart (``dataset`` part: CSV, Parquet or JSON Lines; ``spec`` part: JSON) or a JSON body with ``rows``
    (objects keyed by column) beside the spec fields. Errors: 404 model/version/variant; 413; 415; 422 unknown
    field, bad spec, method or parameters, missing or unknown columns, bad rows (listed in ``errors``), too many
    rows; 503 Redis unavailable.
    """
    svc = services()
    idempotency = check_idempotency_key(request.headers.get("Idempotency-Key"))
    body, frame, where, digest = _read_upload()
    name = body.get("model")
    if not isinstance(name, str):
        raise InvalidRequest("model must be a model name", code="invalid_parameter", field="model")
    model = runnable_model(svc, name, optional_int(body.get("version"), "version"))
    variant = body.get("variant", "fp32")
    if not isinstance(variant, str):
        raise InvalidRequest("variant must be a string", code="invalid_parameter", field="variant")
    variant, _ = svc.predictor.resolve(model, variant)
    callback = accept_callback(svc.settings, body.pop("callback_url", None))
    gateway = AuditGateway(svc, tenant())  # before any file is written: no Redis configured is 503 now
    audit = gateway.recall(idempotency, digest)
    if audit is not None:  # a retried upload: the audit it made, not a second one
        view = gateway.describe(audit)
        return jsonify(view), 202, {"Location": view["location"]}
    if model.card.input_kind == "tabular":
        spec, checked = prepare_audit(body, frame, model, svc.settings, variant=variant, where=where)
    else:
        spec, checked = prepare_perception_audit(body, frame, model, svc.settings, variant=variant, where=where)
    if checked.bad_rows and spec.on_bad_rows == "reject":
        return _bad_rows(checked)
    audit = gateway.submit(spec, checked, model, idempotency=idempotency, digest=digest, callback=callback)
    AUDITS_SUBMITTED.inc()
    view = gateway.describe(audit)
    return jsonify(view), 202, {"Location": view["location"]}


@bp.get("/v1/audits/<audit_id>")
def get_audit(audit_id: str) -> Response:
    """Status, progress (rows, chunks, ETA), times, and the summary or error. Errors: 404 ``audit_not_found``."""
    gateway = AuditGateway(services(), tenant())
    return jsonify(gateway.describe(gateway.open(audit_id)))


@bp.delete("/v1/audits/<audit_id>")
def cancel_audit(audit_id: str) -> Response:
    """Cancel a queued or running audit. Errors: 404; 409 ``audit_not_cancelable``."""
    gateway = AuditGateway(services(), tenant())
    return jsonify(gateway.cancel(gateway.open(audit_id)))


@bp.get("/v1/audits/<audit_id>/rows")
def audit_rows(audit_id: str) -> Response:
    """Per-row predictions, labels and attributions, streamed as ``parquet`` (default), ``csv`` or ``jsonl``.

    ``variant`` names a variant of the compression study: its rows, explained on that variant.
    Errors: 404 (also ``variant_not_found``: not in the study); 409 ``audit_not_ready``; 422 unknown ``format``.
    """
    for key in request.args:
        if key not in ("format", "variant"):
            raise UnknownField(f"unknown query parameter {key!r}", field=key)
    fmt = request.args.get("format", "parquet")
    if fmt not in _FORMATS:
        raise InvalidRequest(f"format must be one of {sorted(_FORMATS)}", code="invalid_parameter", field="format")
    gateway = AuditGateway(services(), tenant())
    audit = gateway.ready(gateway.open(audit_id), report=False)
    variant = request.args.get("variant")
    path = audit.rows_path if variant is None else _study_rows(audit, variant)
    name = f"audit-{audit.id}-rows{'' if variant is None else '-' + variant}.{fmt}"
    if fmt == "parquet":
        return send_file(path, mimetype=_FORMATS[fmt], as_attachment=True, download_name=name)
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(audit.iter_rows(fmt, path=path), mimetype=_FORMATS[fmt], headers=headers)


def _study_rows(audit: Audit, variant: str) -> Path:
    """The per-row table of one variant of the audit's compression study. Raises: NotFound ``variant_not_found``."""
    study = audit.spec.compression or {}
    path = rows_path(audit.path, variant)
    if variant not in study.get("variants", []) or not path.exists():
        msg = f"audit {audit.id} compared no variant {variant!r} with fp32"
        raise NotFound(msg, code="variant_not_found", field="variant")
    return path


@bp.get("/v1/audits/<audit_id>/report")
def audit_report(audit_id: str) -> Response:
    """The self-contained HTML report. Errors: 404; 409 ``audit_not_ready``."""
    gateway = AuditGateway(services(), tenant())
    audit = gateway.ready(gateway.open(audit_id), report=True)
    return send_file(audit.report_path, mimetype="text/html")


@bp.get("/v1/audits/<audit_id>/maps/<int:row>")
def audit_map(audit_id: str, row: int) -> Response:
    """The heatmap PNG an image audit kept for upload row ``row``. Errors: 404 (also ``map_not_found``); 409."""
    gateway = AuditGateway(services(), tenant())
    audit = gateway.ready(gateway.open(audit_id), report=False)
    path = audit.path / "maps" / f"{row}.png"
    if not path.is_file():
        raise NotFound(f"audit {audit.id!r} kept no map for row {row}", code="map_not_found", field="row")
    return send_file(path, mimetype="image/png")


def _read_upload() -> tuple[dict[str, Any], pd.DataFrame, str, str]:
    """The spec fields, the dataset, its name in error fields and the request's digest (for ``Idempotency-Key``),
    from a multipart or JSON request."""
    if request.mimetype == "multipart/form-data":
        check_parts(_PARTS)
        body = check_object(json_part("spec"), SPEC_FIELDS, required={"model"}, where="spec")
        upload = request.files.get("dataset")
        if upload is None:
            raise InvalidRequest("the dataset is required in part 'dataset'", code="missing_field", field="dataset")
        data = upload.read()
        if data[:4] == b"PK\x03\x04":  # a zip (told by content, as the tables are): images and labels.csv
            settings = services().settings
            frame = read_image_zip(data, max_files=settings.max_audit_zip_files, max_bytes=settings.max_audit_zip_bytes)
            return body, frame, "dataset", _digest(body, data)
        return body, read_table(data, where="dataset"), "dataset", _digest(body, data)
    if not request.is_json:
        raise UnsupportedMediaType("send multipart/form-data (dataset, spec) or application/json (rows and spec)")
    body = json_object(SPEC_FIELDS | {"rows"}, required={"model", "rows"})
    digest = _digest(body, b"")
    return body, as_table(body.pop("rows"), where="rows"), "rows", digest


def _digest(spec: dict[str, Any], dataset: bytes) -> str:
    """What identifies an upload: its spec (canonical JSON, rows included for a JSON body) and dataset bytes."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\0" + hashlib.sha256(dataset).digest()).hexdigest()


def _bad_rows(checked: CheckedDataset) -> Response:
    """422 naming the first bad cell, with up to 100 of them listed in ``errors``."""
    error = bad_rows_error(checked)
    cells = [{"field": c.field, "code": c.code, "detail": c.detail} for c in checked.listed]
    extra = {"bad_rows": checked.bad_rows, "bad_cells": checked.bad_cells, "errors": cells}
    return respond(problem_of(error, **extra))
