"""The contract and an interactive page for it (``/openapi.yaml``, ``/docs``, ``/docs/assets/<file>``).

The page is Swagger UI 5 from the ``swagger-ui-py`` package's own copy (``swagger_ui/static``): nothing is fetched
from elsewhere. It loads ``/openapi.yaml`` from this server, so "Try it out" calls this server; "Authorize" takes
an API key for the ``bearer`` scheme and keeps it across reloads (``persistAuthorization``, browser storage).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory

bp = Blueprint("docs", __name__)

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"

ASSETS = Path(str(files("swagger_ui") / "static"))
"""Swagger UI's files as shipped by ``swagger-ui-py``."""

ASSET_NAMES = frozenset(
    {"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"}
)
"""The files the page uses; no other file of the package is served."""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnxplain API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="stylesheet" href="/docs/assets/index.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.yaml",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: false,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});
</script></body></html>"""


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    """Serve the OpenAPI document."""
    return Response(SPEC_PATH.read_bytes(), mimetype="application/yaml")


@bp.get("/docs")
def docs() -> Response:
    """Serve the interactive Swagger UI page over ``/openapi.yaml``."""
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """Serve one of the page's Swagger UI files (cached a day: they change only with the package)."""
    if name not in ASSET_NAMES:
        abort(404)
    return send_from_directory(ASSETS, name, max_age=86400)
