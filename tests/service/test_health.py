"""Health, contract and factory."""

from __future__ import annotations

import yaml

from engine.settings import Settings
from service.app import create_app
from tests.conftest import authorize, issue_key, keyed
from tests.contract import SPEC_PATH


def test_livez_and_readyz(client):
    """Live always; ready with Redis and a writable store."""
    assert client.get("/livez").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"] == {"redis": "ok", "model_store": "ok"}


def test_readyz_is_503_without_redis(tmp_path):
    """A Redis that does not answer makes readiness 503 quickly, naming the check."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("unavailable")


def test_explain_without_redis_is_503(tmp_path, binary_model):
    """With Redis down, explain answers 503 problem+json with Retry-After, never 500."""
    import io

    settings = keyed(Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path / "models"), tmp_path)
    client = authorize(create_app(settings).test_client(), issue_key(settings))
    client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(binary_model.onnx_bytes), "m"),
            "card": binary_model.card_json(),
            "background": (io.BytesIO(binary_model.background_csv()), "b"),
        },
        content_type="multipart/form-data",
    )
    response = client.post("/v1/models/credit:explain", json={"instances": [[1, 2, 3, 4]], "method": "kernel_shap"})
    assert response.status_code == 503 and response.json["code"] == "unavailable"
    assert response.headers["Retry-After"]


def test_factory_is_not_testing_by_default(tmp_path):
    """create_app builds a non-testing app from explicit settings."""
    assert not create_app(Settings(model_dir=tmp_path)).testing


def test_every_route_is_in_the_spec_and_every_spec_path_is_routed(app):
    """The URL map and openapi.yaml name the same paths and methods."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<model_name:{arg}>", f"{{{arg}}}").replace(f"<{arg}>", f"{{{arg}}}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routed.add((path, method))
    assert routed == documented


def test_spec_is_served_and_valid(client):
    """/openapi.yaml is the file on disk and a valid OpenAPI 3.1 document; /docs renders."""
    from openapi_spec_validator import validate

    served = client.get("/openapi.yaml")
    assert served.data == SPEC_PATH.read_bytes()
    validate(yaml.safe_load(served.data))
    assert b"openapi.yaml" in client.get("/docs").data
