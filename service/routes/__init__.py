"""Route blueprints."""

from __future__ import annotations

from flask import Flask

from service.routes import audits, docs, explain, health, metrics, models, recourse, v2, variants


def register_blueprints(app: Flask) -> None:
    """Attach every blueprint to ``app``."""
    for module in (health, metrics, docs, models, explain, recourse, variants, audits, v2):
        app.register_blueprint(module.bp)
