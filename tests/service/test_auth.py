"""API keys, scopes and tenants through HTTP with a real Redis: 401/403/404 per scope and tenant on every route."""

from __future__ import annotations

import io
import json
import logging
import re
import stat

import pytest

from engine.keys import ADMIN, EXPLAIN, READ, SCOPES, read_keys, revoke_key
from service.app import create_app
from service.auth import PUBLIC, RULES
from tests.conftest import authorize, issue_key, upload
from tests.contract import ValidatingClient

# Values for every URL variable of the URL map; a route with a new variable fails until it is given one.
SAMPLE_ARGS = {"name": "credit", "job_id": "explain-0000", "audit_id": "0" * 32, "version": "1", "row": "0"}
METHODS = {"GET", "POST", "DELETE", "PUT", "PATCH"}


def routes(app):
    """Every (method, url, endpoint) of the app's URL map."""
    found = []
    for rule in app.url_map.iter_rules():
        url = rule.rule
        for arg in rule.arguments:
            url = re.sub(rf"<(?:[a-z_]+:)?{arg}>", SAMPLE_ARGS[arg], url)
        for method in sorted(rule.methods & METHODS):
            found.append((method, url, rule.endpoint))
    return found


def test_every_endpoint_has_an_access_rule(app):
    """The rule table names exactly the app's endpoints: a new route without a rule fails here."""
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints == set(RULES)


def test_every_route_answers_401_403_or_passes_by_scope(app, settings, binary_model):
    """Per route: no key and a bad key are 401 with WWW-Authenticate; every other scope is 403; its scope passes."""
    keys = {scope: issue_key(settings, "acme", (scope,)) for scope in SCOPES}
    admin = authorize(app.test_client(), keys[ADMIN])
    assert upload(admin, binary_model).status_code == 201
    checked = 0
    for method, url, endpoint in routes(app):
        needed = RULES[endpoint]
        anonymous = app.test_client().open(url, method=method)
        if needed == PUBLIC:
            assert anonymous.status_code not in (401, 403), (method, url)
            continue
        checked += 1
        assert anonymous.status_code == 401, (method, url, anonymous.status_code)
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        bad = app.test_client().open(
            url, method=method, headers={"Authorization": "Bearer onx_0123456789ab_" + "x" * 43}
        )
        assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"], (method, url)
        for scope, key in keys.items():
            response = authorize(app.test_client(), key).open(url, method=method)
            if scope == needed:
                assert response.status_code not in (401, 403), (method, url, scope, response.get_data())
            else:
                assert response.status_code == 403, (method, url, scope)
                assert f'scope="{needed}"' in response.headers["WWW-Authenticate"]
                if url.startswith("/v1/"):
                    assert response.json["code"] == "insufficient_scope"
    assert checked >= 20


def test_problem_bodies_of_401_say_why(app, settings):
    """Missing key: ``unauthenticated``; unknown or malformed key: ``invalid_key``; both problem+json."""
    client = app.test_client_class(app)
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and missing.json["code"] == "unauthenticated"
    assert missing.mimetype == "application/problem+json"
    basic = client.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and basic.json["code"] == "unauthenticated"
    garbage = client.get("/v1/models", headers={"Authorization": "Bearer not-a-key"})
    assert garbage.status_code == 401 and garbage.json["code"] == "invalid_key"
    v2 = client.get("/v2/models/credit", headers={"Authorization": "Bearer not-a-key"})
    assert v2.status_code == 401 and "error" in v2.json


def _client(app, settings, tenant, scopes=SCOPES) -> ValidatingClient:
    return authorize(app.test_client(), issue_key(settings, tenant, scopes))


def test_private_models_exist_only_for_their_tenant(app, settings, binary_model):
    """Tenant b neither lists, reads, predicts, explains, deletes nor re-registers tenant a's private model."""
    a, b = _client(app, settings, "a"), _client(app, settings, "b")
    created = upload(a, binary_model, name="private-m")
    assert created.status_code == 201 and created.json["visibility"] == "private"
    row = {"instances": binary_model.X[:1].tolist()}
    assert [m["name"] for m in a.get("/v1/models").json["models"]] == ["private-m"]
    assert b.get("/v1/models").json["models"] == []
    for response in (
        b.get("/v1/models/private-m"),
        b.post("/v1/models/private-m:predict", json=row),
        b.post("/v1/models/private-m:explain", json={**row, "wait": 0}),
        b.delete("/v1/models/private-m"),
        b.post("/v1/models/private-m/variants", json={"kind": "int8_dynamic"}),
        b.get("/v2/models/private-m"),
        b.post("/v2/models/private-m/infer", json={"inputs": []}),
    ):
        assert response.status_code == 404, response.get_data()
    taken = upload(b, binary_model, name="private-m")
    assert taken.status_code == 409 and taken.json["code"] == "model_name_taken"
    assert a.post("/v1/models/private-m:predict", json=row).status_code == 200


def test_shared_models_are_used_by_all_and_changed_by_their_owner(app, settings, binary_model):
    """visibility=shared: tenant b reads and predicts; only the owner deletes or adds versions."""
    a, b = _client(app, settings, "a"), _client(app, settings, "b")
    data = {
        "model": (io.BytesIO(binary_model.onnx_bytes), "m.onnx"),
        "card": binary_model.card_json(name="shared-m"),
        "visibility": "shared",
    }
    created = a.post("/v1/models", data=data, content_type="multipart/form-data")
    assert created.status_code == 201 and created.json["visibility"] == "shared"
    assert b.get("/v1/models/shared-m").status_code == 200
    assert b.post("/v1/models/shared-m:predict", json={"instances": binary_model.X[:1].tolist()}).status_code == 200
    refused = b.delete("/v1/models/shared-m")
    assert refused.status_code == 409 and refused.json["code"] == "model_not_owned"
    assert upload(b, binary_model, name="shared-m").json["code"] == "model_name_taken"
    bad = a.post(
        "/v1/models",
        data={"model": (io.BytesIO(binary_model.onnx_bytes), "m"), "card": binary_model.card_json(), "visibility": "x"},
        content_type="multipart/form-data",
    )
    assert bad.status_code == 422 and bad.json["field"] == "visibility"
    assert a.delete("/v1/models/shared-m").status_code == 200


def test_jobs_belong_to_their_tenant(app, settings, binary_model):
    """Tenant b gets 404 reading or cancelling tenant a's job, even for a shared model."""
    a, b = _client(app, settings, "a"), _client(app, settings, "b")
    data = {
        "model": (io.BytesIO(binary_model.onnx_bytes), "m.onnx"),
        "card": binary_model.card_json(),
        "background": (io.BytesIO(binary_model.background_csv()), "b.csv"),
        "visibility": "shared",
    }
    assert a.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    body = {"instances": binary_model.X[:1].tolist(), "method": "kernel_shap", "wait": 0}
    queued = a.post("/v1/models/credit:explain", json=body)
    assert queued.status_code == 202
    job = queued.json["id"]
    assert a.get(f"/v1/jobs/{job}").status_code == 200
    for response in (b.get(f"/v1/jobs/{job}"), b.delete(f"/v1/jobs/{job}")):
        assert response.status_code == 404 and response.json["code"] == "job_not_found"
    assert a.delete(f"/v1/jobs/{job}").json["status"] == "canceled"


def test_audits_belong_to_their_tenant(app, settings, binary_model):
    """Tenant b gets 404 on tenant a's audit, its rows, report and cancel."""
    a, b = _client(app, settings, "a"), _client(app, settings, "b")
    assert upload(a, binary_model).status_code == 201
    rows = [dict(zip(binary_model.card["features"], map(float, x), strict=True)) for x in binary_model.X[:5]]
    submitted = a.post("/v1/audits", json={"model": "credit", "rows": rows, "method": "kernel_shap"})
    assert submitted.status_code == 202, submitted.json
    audit = submitted.json["id"]
    assert a.get(f"/v1/audits/{audit}").status_code == 200
    for response in (
        b.get(f"/v1/audits/{audit}"),
        b.get(f"/v1/audits/{audit}/rows"),
        b.get(f"/v1/audits/{audit}/report"),
        b.delete(f"/v1/audits/{audit}"),
    ):
        assert response.status_code == 404 and response.json["code"] == "audit_not_found"
    assert a.delete(f"/v1/audits/{audit}").json["status"] == "canceled"


def test_keys_are_added_and_revoked_without_a_restart(app, settings):
    """A key added after start works at once; once revoked, it is refused on the next request."""
    client = app.test_client_class(app)
    key = issue_key(settings, "late", (READ,))
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    revoke_key(settings, key.split("_")[1])
    refused = client.get("/v1/models", headers=headers)
    assert refused.status_code == 401 and refused.json["code"] == "invalid_key"


def test_keys_file_holds_only_keyed_hashes(settings):
    """The file stores HMAC-SHA256 digests, never the key; it is readable by its owner only."""
    key = issue_key(settings, "acme", (EXPLAIN, READ))
    text = settings.keys_file.read_text()
    secret_part = key.split("_", 2)[2]
    assert key not in text and secret_part not in text
    (record,) = read_keys(settings.keys_file).values()
    assert record.hash.startswith("hmac-sha256:") and len(record.hash) == len("hmac-sha256:") + 64
    assert record.tenant == "acme" and record.scopes == (EXPLAIN, READ)
    assert stat.S_IMODE(settings.keys_file.stat().st_mode) == 0o600
    assert json.loads(text)["keys"][0]["id"] == record.id


def test_another_server_secret_refuses_every_key(app, settings):
    """Keys hash under the server secret: the same file under another secret grants nothing."""
    key = issue_key(settings, "acme", (READ,))
    other = create_app(settings.replace(keys_secret="another-secret"))
    response = other.test_client().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401


def test_auth_off_serves_everyone_and_says_so(settings, redis_conn, caplog):
    """ONNXPLAIN_AUTH=off: no key needed, one tenant ``local``, and a loud warning in the log."""
    with caplog.at_level(logging.WARNING):
        app = create_app(settings.replace(auth="off"))
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    assert app.test_client().get("/v1/models").status_code == 200


def test_bad_auth_setting_is_refused():
    """ONNXPLAIN_AUTH takes on or off only."""
    from engine.errors import InvalidRequest
    from engine.settings import Settings

    with pytest.raises(InvalidRequest) as caught:
        Settings.from_env({"ONNXPLAIN_AUTH": "maybe"})
    assert caught.value.field == "ONNXPLAIN_AUTH"
