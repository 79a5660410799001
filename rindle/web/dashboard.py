"""rq-dashboard, mounted in the app behind authentication: never without.

``init_app`` mounts it at ``/rq`` when ``RINDLE_DASHBOARD_PASSWORD`` is set, behind HTTP
basic auth (user ``RINDLE_DASHBOARD_USER``). An app with its own login calls
``mount(app, authorize=...)`` instead, with a function that says whether the current
request may see it. Its destructive actions (delete a job, empty a queue) are switched
off: they are plain POSTs without CSRF protection, and a browser resends basic auth by
itself.
"""

from __future__ import annotations

import hmac
import html
import json
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request

from rindle.config import redact_url
from rindle.errors import ConfigError
from rindle.web.context import EXTENSION

BLUEPRINT = "rq_dashboard"
REALM = "rindle rq-dashboard"


def mount(app: Flask, url_prefix: str = "/rq", authorize: Callable[[], bool] | None = None) -> None:
    """Serve rq-dashboard on rindle's Redis at ``url_prefix`` (call after init_app).
    ``authorize()`` says whether the current request may see it; without one, HTTP
    basic auth with RINDLE_DASHBOARD_USER / RINDLE_DASHBOARD_PASSWORD, which must be set."""
    settings = app.extensions[EXTENSION].settings
    if authorize is None:
        if not settings.dashboard_password:
            raise ConfigError(
                "rq-dashboard needs authentication: set RINDLE_DASHBOARD_PASSWORD, or "
                "mount it with an authorize function"
            )
        authorize = basic_auth(settings.dashboard_user, settings.dashboard_password)
    import rq_dashboard  # only where it is mounted: it pulls in arrow and more

    # rq-dashboard connects from its URL setting on every request (no TLS options, a pool
    # of its own): it gets rindle's raw client instead, inside the process's budget. The
    # URL it shows in its page has no password.
    # Looked up per request, not now: the pool is built after gunicorn's fork.
    app.config[CONNECTION] = True
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", (redact_url(settings.redis_url),))
    app.config.setdefault("RQ_DASHBOARD_DISABLE_DELETE", True)
    rq_dashboard.web.upgrade_config(app)
    if rq_dashboard.web.from_url is not _connect:
        _original.append(rq_dashboard.web.from_url)
        rq_dashboard.web.from_url = _connect
    check = authorize

    def guard() -> Response | None:
        if request.blueprint == BLUEPRINT and not check():
            return Response(
                "authentication required\n",
                401,
                {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
                content_type="text/plain",
            )
        return None

    def escape_data(response: Response) -> Response:
        if request.blueprint == BLUEPRINT and response.is_json:
            response.set_data(json.dumps(escaped(response.get_json())))
        return response

    app.before_request(guard)
    app.after_request(escape_data)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=url_prefix)


def escaped(data: Any) -> Any:
    """Every string in rq-dashboard's JSON, HTML-escaped: its page puts job fields
    (description, exc_info, result...) into the page with templates that do not escape
    (``<%= %>``), and an exception message may carry a client's text (a file name, say).
    Escaped here, it shows as text, never as markup."""
    if isinstance(data, str):
        return html.escape(data)
    if isinstance(data, list):
        return [escaped(item) for item in data]
    if isinstance(data, dict):
        return {key: escaped(value) for key, value in data.items()}
    return data


CONNECTION = "RINDLE_DASHBOARD_CONNECTION"
_original: list[Callable[..., Any]] = []


def _connect(url: str, **kwargs: Any) -> tuple[None, Any]:
    """rq-dashboard's per-request connect: rindle's client where rindle mounted it."""
    if not current_app.config.get(CONNECTION) and _original:
        return _original[0](url, **kwargs)  # an app that mounted rq-dashboard itself
    return None, current_app.extensions[EXTENSION].jobs.queue.connection


def basic_auth(user: str, password: str) -> Callable[[], bool]:
    """Whether the request carries these credentials (compared in constant time)."""
    expected = (user.encode(), password.encode())

    def check() -> bool:
        auth = request.authorization
        if auth is None or auth.type != "basic":
            return False
        given = ((auth.username or "").encode(), (auth.password or "").encode())
        # Both compared, always: the time taken says nothing about which one is wrong.
        same_user = hmac.compare_digest(given[0], expected[0])
        same_password = hmac.compare_digest(given[1], expected[1])
        return same_user and same_password

    return check
