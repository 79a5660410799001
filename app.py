"""The deployable app: rindle mounted at /files/, plus /healthz, and with RINDLE_DEMO=1
(the dev stack) an upload page at / (``demo/``)."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import rindle


def create_app(settings: rindle.Settings | None = None, hooks: rindle.Hooks | None = None) -> Flask:
    settings = settings or rindle.Settings.from_env()
    # One line per event, with the request and upload ids (RINDLE_LOG_FORMAT=json: JSON).
    rindle.configure_logging(settings.log_format)
    app = Flask(__name__)
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
    if not settings.public and (hooks is None or hooks.authorize is None):
        # Without an authorize hook anyone who reaches the app may upload.
        raise rindle.ConfigError(
            "app.py accepts uploads from anyone: set RINDLE_PUBLIC=1 to mean it, or give "
            "rindle.init_app an authorize hook (see the README's Hooks)"
        )
    uploads = rindle.init_app(app, settings, hooks=hooks)
    if settings.demo:
        from demo.page import blueprint as demo_page  # Uppy's Dashboard: see demo/

        app.register_blueprint(demo_page)

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            uploads.redis.ping()
        except redis.RedisError as exc:
            logging.getLogger("rindle").error("healthz: Redis unavailable: %s", exc)
            return jsonify(status="redis_unavailable"), 503  # no internals to the world
        return jsonify(status="ok"), 200

    return app


app = create_app()
