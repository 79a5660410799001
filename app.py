"""The deployable app: rindle mounted at /files/, plus /healthz."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import rindle


def create_app(settings: rindle.Settings | None = None) -> Flask:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = Flask(__name__)
    settings = settings or rindle.Settings.from_env()
    if settings.trusted_proxies:
        # Honour X-Forwarded-Proto/Host/Port so Location points at the public URL.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=settings.trusted_proxies,
            x_host=settings.trusted_proxies,
            x_port=settings.trusted_proxies,
            x_prefix=settings.trusted_proxies,
        )
    uploads = rindle.init_app(app, settings)

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            uploads.redis.ping()
        except redis.RedisError as exc:
            return jsonify(status="redis_unavailable", message=str(exc)), 503
        return jsonify(status="ok"), 200

    return app


app = create_app()
