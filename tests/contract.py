"""Check every test response against openapi.yaml (openapi-core)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse

SPEC_PATH = Path(__file__).resolve().parents[1] / "openapi.yaml"
_spec: OpenAPI | None = None


def spec() -> OpenAPI:
    global _spec
    if _spec is None:
        config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
        _spec = OpenAPI.from_dict(yaml.safe_load(SPEC_PATH.read_text()), config=config)
    return _spec


class ValidatingClient(FlaskClient):
    """A test client whose every response must conform to the contract."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        if response.request.path.startswith(("/v1/", "/v2/", "/livez", "/readyz")):
            validate(response)
        return response


def validate(response: Any) -> None:
    """Validate one Flask test response against the operation it answers."""
    req = response.request
    mock_request = MockRequest("http://localhost", req.method.lower(), req.path, args=dict(req.args))
    headers = {k: v for k, v in response.headers.items()}
    mock_response = MockResponse(
        response.get_data(), status_code=response.status_code, headers=headers, content_type=response.mimetype
    )
    try:
        spec().validate_response(mock_request, mock_response)
    except PathNotFound:
        # Paths outside the contract must not exist.
        assert response.status_code == 404, f"{req.path} answered {response.status_code} but is not in openapi.yaml"
    except OperationNotFound:
        assert response.status_code == 405, f"{req.method} {req.path} is not in openapi.yaml"
