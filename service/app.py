"""The Flask application factory: ``gunicorn 'service.app:create_app()'``."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.routing import BaseConverter

from engine.logs import configure_logging
from engine.settings import Settings
from service.auth import init_auth
from service.errors import register_error_handlers
from service.extensions import init_app
from service.json_text import FastJSONProvider
from service.limits import init_limits
from service.observe import init_observe
from service.routes import register_blueprints


class ModelNameConverter(BaseConverter):
    """Model names: no slash and no colon, so ``name:predict`` routes stay unambiguous."""

    regex = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API.

    Args:
        settings: Configuration; read from ``ONNXPLAIN_*`` variables when omitted.

    Returns:
        The Flask application. No onnxruntime session exists yet: sessions
        are created lazily in each (forked) worker process.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings.log_format)
    app = Flask(__name__, static_folder=None)  # no static route: every route is in the contract and RULES
    app.url_map.converters["model_name"] = ModelNameConverter
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_model_bytes, settings.max_body_bytes)
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_model_bytes
    app.json = FastJSONProvider(app)  # orjson: large explanation results encode 10-20× faster
    app.json.sort_keys = False
    init_observe(app)  # first: every request, refused ones included, gets an id, a log line and a count
    services = init_app(app, settings)
    init_auth(app, settings, services.keys)
    init_limits(app, settings)  # after the auth check: limits count per key

    @app.before_request
    def _limit_body() -> None:
        # Uploads may be large; every other body is small. Checked against
        # Content-Length before anything is buffered.
        is_upload = request.method == "POST" and request.path.rstrip("/") in {"/v1/models", "/v1/audits"}
        request.max_content_length = settings.max_model_bytes if is_upload else settings.max_body_bytes

    register_error_handlers(app)
    register_blueprints(app)
    rejected = services.registry.scan()
    for key, why in rejected.items():
        app.logger.warning("model %s in the store was not loaded: %s", key, why)
    return app
