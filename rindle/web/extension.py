"""Registering rindle on a Flask app: settings, services, blueprint, CLI, CORS."""

from __future__ import annotations

from flask import Flask, request
from flask.typing import ResponseReturnValue
from flask_cors import CORS
from werkzeug.exceptions import MethodNotAllowed

from rindle import draft, jobs, protocol
from rindle.config import Settings
from rindle.core import Rindle
from rindle.hooks import Hooks
from rindle.web import dashboard, graceful, metrics, observe
from rindle.web.blueprint import blueprint, method_not_allowed
from rindle.web.cli import cli
from rindle.web.context import EXTENSION, app_context_rindle
from rindle.web.middleware import MethodOverride


def init_app(
    app: Flask,
    settings: Settings | None = None,
    url_prefix: str = "/files",
    hooks: Hooks | None = None,
) -> Rindle:
    """Register rindle on ``app``: settings in ``app.config["RINDLE"]``, blueprint at
    ``url_prefix``, ``flask rindle ...`` commands, the app's ``hooks``, the graceful stop
    on SIGTERM in a gunicorn worker (``rindle.web.graceful``); ``/metrics`` with
    RINDLE_METRICS=1, rq-dashboard at ``/rq`` with RINDLE_DASHBOARD_PASSWORD. Returns the
    app's services (also in ``app.extensions["rindle"]``)."""
    settings = settings or app.config.get("RINDLE") or Settings.from_env()
    app.config["RINDLE"] = settings
    rindle = Rindle(settings, hooks, sender=app)
    app.extensions[EXTENSION] = rindle
    graceful.register(rindle)
    graceful.install_in_gunicorn_worker()  # with --preload: gunicorn.conf.py's hook does
    jobs.add_lookup(app_context_rindle)
    app.register_blueprint(blueprint, url_prefix=url_prefix)
    observe.install(app)  # request ids on log lines, request counts
    answer_405_in_json(app, url_prefix)
    if settings.metrics:
        metrics.mount(app)
    if settings.dashboard_password:
        dashboard.mount(app)
    app.cli.add_command(cli)
    app.wsgi_app = MethodOverride(app.wsgi_app, url_prefix)  # type: ignore[method-assign]
    if settings.cors_origins:
        # flask-cors: preflights, Vary: Origin and credentials done right; we only say
        # which tus and IETF draft headers a browser may send and read.
        CORS(
            app,
            resources={rf"{url_prefix}(/.*)?": {}},
            origins=list(settings.cors_origins),
            methods=[*protocol.METHODS, "PUT"],  # PUT: the draft's creation
            allow_headers=unique(protocol.REQUEST_HEADERS + draft.REQUEST_HEADERS),
            expose_headers=unique(protocol.RESPONSE_HEADERS + draft.RESPONSE_HEADERS),
            max_age=86400,
        )
    return rindle


def unique(names: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(names))


def answer_405_in_json(app: Flask, url_prefix: str) -> None:
    """A method the tus endpoints do not serve answers JSON with Allow, like every other
    refusal. Routing errors never reach a blueprint's handlers, so this is the app's
    handler, for rindle's paths only; elsewhere the app's earlier handler (or Flask's
    default) answers as before."""
    prefix = url_prefix.rstrip("/") + "/"
    previous = app.error_handler_spec[None][405].get(MethodNotAllowed)

    def handler(err: MethodNotAllowed) -> ResponseReturnValue:
        if request.path.startswith(prefix):
            return method_not_allowed(err)
        return previous(err) if previous is not None else err

    app.register_error_handler(MethodNotAllowed, handler)
