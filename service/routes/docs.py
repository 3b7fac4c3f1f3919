"""The contract and a readable page for it (``/openapi.yaml``, ``/docs``)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

bp = Blueprint("docs", __name__)

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"

# A self-contained page: the service must not fetch scripts from elsewhere,
# so it renders the spec's paths and descriptions itself.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnxplain API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
pre{background:#f6f8fa;padding:1rem;overflow:auto;font-size:.85rem}</style></head>
<body><h1>onnxplain API</h1>
<p>The machine-readable contract is at <a href="/openapi.yaml">/openapi.yaml</a> (OpenAPI 3.1).</p>
<pre id="spec"></pre>
<script>fetch('/openapi.yaml').then(r=>r.text()).then(t=>{document.getElementById('spec').textContent=t;});</script>
</body></html>"""


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    """Serve the OpenAPI document."""
    return Response(SPEC_PATH.read_bytes(), mimetype="application/yaml")


@bp.get("/docs")
def docs() -> Response:
    """Serve a page that shows the contract."""
    return Response(_PAGE, mimetype="text/html")
