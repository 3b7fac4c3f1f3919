"""Model registry and prediction routes (``/v1/models``)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from engine.errors import Conflict, InvalidRequest, NotFound, OnnxplainError, QueueFull, UnknownField
from engine.explain.plan import methods_for
from engine.models import quarantine
from engine.models.access import VISIBILITIES
from engine.models.card import ModelCard
from engine.models.rows import parse_inputs
from engine.models.store import ModelVersion
from engine.variants import state as variants
from service.auth import managed_model, runnable_model, tenant, visible_model
from service.bodies import check_parts, json_object, json_part, optional_int
from service.extensions import UPLOAD, services
from service.routes.variants import request_card_variants

bp = Blueprint("models", __name__)
log = logging.getLogger(__name__)

_UPLOAD_PARTS = {"model", "card", "background", "tokenizer", "visibility"}


def model_resource(model: ModelVersion) -> dict[str, Any]:
    """Return the public JSON of a model version, with its other versions."""
    body = model.to_dict()
    body["versions"] = services().registry.versions(model.name)
    body["variants"] = [v.to_dict() for v in variants.list_variants(model)]
    body["methods"] = methods_for(model)
    body["visibility"] = services().access.of(model.name).visibility
    found = quarantine.read(model.path)
    body["quarantine"] = found.to_dict() if found is not None else None
    return body


@bp.post("/v1/models")
def register_model() -> tuple[Response, int, dict[str, str]]:
    """Register a model (multipart: ``model``, ``card``, optional ``background``, ``tokenizer`` and ``visibility``).

    The model belongs to the key's tenant; ``visibility=shared`` lets every tenant read and explain it.
    A token-id text model sends its ``tokenizers`` JSON in ``tokenizer`` (413 ``tokenizer_too_large``,
    422 ``invalid_tokenizer``).
    Errors: 409 ``model_name_taken`` (another tenant's name); 413 over the size cap; 415 not multipart;
    422 with ``not_onnx``, ``invalid_model``, ``external_data_not_allowed``, ``unsupported_op_domain``,
    ``card_mismatch``, ``invalid_card`` or ``invalid_background``.
    """
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest(
            "send multipart/form-data with parts model, card and optional background", code="not_multipart"
        )
    check_parts(_UPLOAD_PARTS)
    model_file = request.files.get("model")
    if model_file is None:
        raise InvalidRequest("the ONNX file is required in part 'model'", code="missing_field", field="model")
    card = ModelCard.from_dict(json_part("card", invalid_code="invalid_card"))
    background = request.files.get("background")
    background_bytes = background.read() if background is not None else None
    tokenizer = request.files.get("tokenizer")
    # Read one byte past the cap: enough to refuse an oversized part without holding all of it.
    tokenizer_bytes = tokenizer.read(services().settings.max_tokenizer_bytes + 1) if tokenizer is not None else None
    # Decide the format from the content, never from the client's filename.
    fmt = "parquet" if background_bytes is not None and background_bytes[:4] == b"PAR1" else "csv"
    visibility = request.form.get("visibility")
    if visibility is not None and visibility not in VISIBILITIES:
        raise InvalidRequest(
            f"visibility must be one of {list(VISIBILITIES)}", code="invalid_parameter", field="visibility"
        )
    svc = services()
    with svc.slot(UPLOAD) as may_run:
        if not may_run:  # the trial run holds its thread up to probe_timeout_s: a bounded number at once
            raise QueueFull(
                "too many uploads are in their trial run on this server; retry later",
                code="uploads_busy",
                retry_after_s=svc.settings.queue_full_retry_after_s,
            )
        claimed = svc.access.claim(card.name, tenant(), visibility)
        try:
            model = svc.registry.register(model_file.read(), card, background_bytes, fmt, tokenizer_bytes)
        except OnnxplainError:
            if claimed:
                svc.access.release(card.name)
            raise
    if card.variants:
        request_card_variants(svc, model, tenant())
    location = url_for("models.get_model", name=model.name, version=model.version)
    return jsonify(model_resource(model)), 201, {"Location": location}


@bp.get("/v1/models")
def list_models() -> Response:
    """List models (latest version of each), paginated by ``limit`` and ``cursor``."""
    limit = optional_int(request.args.get("limit"), "limit", maximum=200, text=True) or 50
    cursor = request.args.get("cursor", "")
    for key in request.args:
        if key not in {"limit", "cursor"}:
            raise UnknownField(f"unknown query parameter {key!r}", field=key)
    svc = services()
    registry, caller = svc.registry, tenant()
    names = [n for n in registry.names() if n > cursor and svc.access.of(n).readable_by(caller)]
    page = names[:limit]
    items = [model_resource(registry.get(n)) for n in page]
    return jsonify({"models": items, "next_cursor": page[-1] if len(names) > limit else None})


@bp.get("/v1/models/<model_name:name>")
def get_model(name: str) -> Response:
    """Describe the latest version of a model, or ``?version=``. Errors: 404."""
    version = optional_int(request.args.get("version"), "version", text=True)
    return jsonify(model_resource(visible_model(services(), name, version)))


@bp.delete("/v1/models/<model_name:name>")
def delete_model(name: str) -> Response:
    """Delete every version of a model, or ``?version=``.

    Errors: 404; 409 ``model_in_use`` while a queued or running job or audit uses a version; 503 Redis.
    """
    version = optional_int(request.args.get("version"), "version", text=True)
    svc = services()
    managed_model(svc, name, version)
    targets = [svc.registry.get(name, version).version] if version is not None else svc.registry.versions(name)
    if not targets:
        raise NotFound(f"no model named {name!r}", code="model_not_found", field="name")
    if svc.settings.redis_url is not None:
        users = svc.jobs().users_of(name, targets)
        if users:
            raise Conflict(
                f"model {name!r} is in use by {len(users)} queued or running job(s) or audit(s), e.g. {users[0]}; "
                "cancel them or wait for them to end",
                code="model_in_use",
            )
    deleted = svc.registry.delete(name, version)
    return jsonify({"name": name, "deleted_versions": deleted})


@bp.delete("/v1/models/<model_name:name>/quarantine")
def clear_quarantine(name: str) -> Response:
    """Lift the quarantine of a model's versions, or of ``?version=`` (an operator's call, scope admin).

    Answers the versions cleared with the records they had (empty when none was quarantined). Errors: 404.
    """
    version = optional_int(request.args.get("version"), "version", text=True)
    svc = services()
    managed_model(svc, name, version)
    targets = [version] if version is not None else svc.registry.versions(name)
    cleared = []
    for number in targets:
        record = quarantine.clear(svc.registry.get(name, number).path)
        if record is not None:
            log.warning("model %s version %d: quarantine (%s, job %s) cleared", name, number, record.code, record.job)
            cleared.append({"version": number, **record.to_dict()})
    return jsonify({"name": name, "cleared": cleared})


@bp.post("/v1/models/<model_name:name>:predict")
def predict(name: str) -> Response:
    """Predict rows. Errors: 404 model/version/variant; 415; 422 bad rows."""
    body = json_object({"instances", "version", "variant"}, required={"instances"})
    svc = services()
    model = runnable_model(svc, name, optional_int(body.get("version"), "version"))
    variant = body.get("variant", "fp32")
    if not isinstance(variant, str):
        raise InvalidRequest("variant must be a string", code="invalid_parameter", field="variant")
    X = parse_inputs(body["instances"], model.card, max_rows=svc.settings.max_rows)
    variant, session = svc.predictor.resolve(model, variant)
    predictions = svc.predictor.predict(model, X, variant, session=session)
    return jsonify(
        {
            "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": variant},
            "provider": session.provider,
            "predictions": predictions,
        }
    )
