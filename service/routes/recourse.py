"""Recourse routes: ``:counterfactual`` (a job like explain) and the global surrogate (``/surrogate``)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from engine.errors import InvalidRequest, UnknownField
from engine.jobs import JOBS
from engine.recourse.counterfactual import build_counterfactual
from engine.recourse.surrogate import DEFAULT_DEPTH, MAX_DEPTH, MIN_ROWS, read_surrogate
from service.auth import runnable_model, tenant, visible_model
from service.bodies import json_object, optional_int
from service.extensions import services
from service.gateways.jobs import check_idempotency_key
from service.routes.explain import answer, read_target, read_wait

bp = Blueprint("recourse", __name__)

_FIELDS = {"instances", "desired", "desired_range", "constraints", "parameters", "version", "variant", "wait"}


@bp.post("/v1/models/<model_name:name>:counterfactual")
def counterfactual(name: str) -> tuple[Response, int, dict[str, str]]:
    """Counterfactuals of rows: 200 with the result when done within ``wait``, else 202 and the job.

    Errors: 404 model/version/variant; 415; 422 bad rows, desired outcome, constraints or parameters, a model
    that is not tabular or has no background; 503 Redis unavailable.
    """
    svc = services()
    body = json_object(_FIELDS, required={"instances"})
    model, variant, wait = read_target(svc, name, body)
    idempotency = check_idempotency_key(request.headers.get("Idempotency-Key"))
    payload = build_counterfactual(body, model, svc.settings, variant)
    submission = svc.jobs().submit(
        JOBS["counterfactual"],
        payload,
        timeout=svc.settings.job_timeout_s,
        tenant=tenant(),
        idempotency=idempotency,
        uses=(model.name, model.version),
    )
    return answer(submission, wait)


@bp.get("/v1/models/<model_name:name>/surrogate")
def surrogate(name: str) -> tuple[Response, int, dict[str, str]]:
    """The model version's global surrogate: 200 once computed, else a job over its background (202, or 200
    when it ends within ``wait``). Computed once per version and depth, then read from the store.

    Query: ``version``, ``max_depth`` (1..8, default 3), ``wait`` (seconds). Errors: 404; 422 bad query, no
    background; 503 Redis unavailable.
    """
    svc = services()
    for key in request.args:
        if key not in ("version", "max_depth", "wait"):
            raise UnknownField(f"unknown query parameter {key!r}", field=key)
    version = optional_int(request.args.get("version"), "version", text=True)
    model = visible_model(svc, name, version)
    depth = optional_int(request.args.get("max_depth"), "max_depth", maximum=MAX_DEPTH, text=True) or DEFAULT_DEPTH
    raw_wait = request.args.get("wait")
    try:
        wait = read_wait(float(raw_wait) if raw_wait is not None else svc.settings.default_wait_s)
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds", code="invalid_parameter", field="wait") from None
    kept = read_surrogate(model, depth)
    if kept is not None:
        return jsonify(kept), 200, {}
    model = runnable_model(svc, name, version)  # computing it runs the model: not while it is quarantined
    if model.background_rows < MIN_ROWS:
        raise InvalidRequest(
            f"a surrogate is fitted on the background, which needs at least {MIN_ROWS} rows; "
            f"model {model.name!r} v{model.version} has {model.background_rows}",
            code="background_required",
            field="version",
        )
    payload = {"model": model.name, "version": model.version, "sha256": model.sha256, "max_depth": depth}
    submission = svc.jobs().submit(
        JOBS["surrogate"],
        payload,
        timeout=svc.settings.batch_job_timeout_s,
        tenant=tenant(),
        uses=(model.name, model.version),
    )
    return answer(submission, wait)
