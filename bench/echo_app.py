"""The bare Flask app ``bench/http_bench.py`` compares ``:predict`` with: it parses the JSON body and echoes it.

Served with the same ``gunicorn.conf.py`` as the API (``gunicorn 'bench.echo_app:create_app()'``), so the
difference between the two is onnxplain's own work per request: auth, rate limit, validation, the model call.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """The echo app: ``POST /echo`` answers its JSON body, ``GET /livez`` answers ``ok``."""
    app = Flask(__name__)

    @app.post("/echo")
    def echo() -> Any:
        return jsonify(request.get_json())

    @app.get("/livez")
    def livez() -> Any:
        return jsonify({"status": "ok"})

    return app
