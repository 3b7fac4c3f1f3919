"""Explanation and job routes (``:explain``, ``/v1/jobs``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine.errors import InvalidRequest
from engine.explain.plan import build_request
from engine.jobs import JOBS
from engine.models.store import ModelVersion
from engine.webhooks import accept_callback
from service.auth import runnable_model, tenant
from service.bodies import json_object, optional_int
from service.errors import respond
from service.extensions import WAIT, Services, services
from service.gateways.jobs import Submission, check_idempotency_key

bp = Blueprint("explain", __name__)

_FIELDS = {"instances", "method", "parameters", "targets", "version", "variant", "wait", "callback_url"}
_MAX_WAIT_S = 3600  # longer waits are capped by max_wait_s anyway; past this it is a client bug


@bp.post("/v1/models/<model_name:name>:explain")
def explain(name: str) -> tuple[Response, int, dict[str, str]]:
    """Explain rows: 200 with the result when done within ``wait``, else 202 and the job.

    The tenant's identical request (or its same ``Idempotency-Key``) answers from the job it already made
    (``X-Cache: hit``). Errors: 404 model/version/variant; 415; 422 bad rows, method, parameters
    or targets, or no background; 503 Redis unavailable.
    """
    svc = services()
    body = json_object(_FIELDS, required={"instances"})
    model, variant, wait = read_target(svc, name, body)
    idempotency = check_idempotency_key(request.headers.get("Idempotency-Key"))
    callback = accept_callback(svc.settings, body.pop("callback_url", None))
    explain_request = build_request(body, model, svc.settings, variant)
    submission = svc.jobs().submit(
        JOBS["explain"],
        explain_request.to_payload(),
        timeout=svc.settings.job_timeout_s,
        tenant=tenant(),
        idempotency=idempotency,
        uses=(model.name, model.version),
        callback=callback,
    )
    return answer(submission, wait)


def read_target(svc: Services, name: str, body: dict[str, Any]) -> tuple[ModelVersion, str, float]:
    """The model version a job request names (runnable: not quarantined), its resolved variant and its ``wait``.

    Raises:
        NotFound: No such model, version or variant.
        Conflict: The version is quarantined.
        InvalidRequest: A bad ``version``, ``variant`` or ``wait``.
    """
    model = runnable_model(svc, name, optional_int(body.get("version"), "version"))
    wait = read_wait(body.get("wait", svc.settings.default_wait_s))
    variant = body.get("variant", "fp32")
    if not isinstance(variant, str):
        raise InvalidRequest("variant must be a string", code="invalid_parameter", field="variant")
    # Checked here (a variant that is not ready is a 404 now, not a failed job), served by the worker.
    return model, svc.predictor.served_variant(model, variant), wait


def read_wait(wait: object) -> float:
    """Check a request's ``wait`` (seconds, 0..3600).

    Raises:
        InvalidRequest: ``invalid_parameter`` on ``wait``.
    """
    # A chained comparison: NaN fails it, and a 400-digit integer is compared exactly, never turned into a float.
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= _MAX_WAIT_S:
        raise InvalidRequest(
            f"wait must be a number of seconds from 0 to {_MAX_WAIT_S}", code="invalid_parameter", field="wait"
        )
    return float(wait)


def job_location(job_id: str) -> str:
    """The URL path of a job's view (:func:`get_job`): ``url_for``'s answer without its rule lookup (50 µs of a
    sync explain). Job ids are URL-safe (``JOB_ID``), so nothing needs quoting."""
    return f"{request.script_root}/v1/jobs/{job_id}"


def answer(submission: Submission, wait: float) -> tuple[Response, int, dict[str, str]]:
    """Wait up to ``wait`` seconds for a submitted job: 200 with its result, its error, or 202 with the job."""
    svc = services()
    gateway = svc.jobs()
    job = submission.job
    state = None
    with svc.slot(WAIT) as may_wait:
        # Past the process's waiters the request answers 202 now: waiting must not take the threads that
        # predict and health need.
        if may_wait:
            state = gateway.wait(job, min(wait, svc.settings.max_wait_s), fresh=submission.cache == "miss")
    location = job_location(job.id)
    view = {**gateway.describe(job, location=location, state=state), "cache": submission.cache}
    headers = {"X-Job-Id": job.id, "X-Cache": submission.cache}
    if view["status"] == "succeeded":
        return jsonify(view["result"]), 200, headers
    if view["status"] == "failed":
        response = respond(view["error"])
        return response, response.status_code, headers
    return jsonify(view), 202, {**headers, "Location": location}


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Job status, progress, times, and the result or error. Errors: 404 ``job_not_found``."""
    gateway = services().jobs()
    job = gateway.fetch(job_id, tenant())
    return jsonify(gateway.describe(job, location=job_location(job_id)))


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a queued or running job. Errors: 404; 409 ``job_not_cancelable``."""
    gateway = services().jobs()
    job = gateway.cancel(job_id, tenant())
    return jsonify(gateway.describe(job, location=job_location(job_id)))
