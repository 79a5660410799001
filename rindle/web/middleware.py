"""WSGI middleware for clients that cannot send every HTTP method."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Every method the tus endpoints serve but POST itself: the tus spec says the header IS
# the request's method, so a client behind a proxy that passes only GET and POST can
# still HEAD, PATCH, DELETE and OPTIONS.
OVERRIDABLE = ("HEAD", "GET", "PATCH", "DELETE", "OPTIONS")


class MethodOverride:
    """A POST with ``X-HTTP-Method-Override: <method>`` under ``prefix`` is handled as
    that method (tus-js-client's ``overridePatchMethod``, old proxies)."""

    def __init__(self, app: WSGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").strip().upper()
        if (
            override in OVERRIDABLE
            and environ.get("REQUEST_METHOD") == "POST"
            and environ.get("PATH_INFO", "").startswith(self.prefix)
        ):
            environ["REQUEST_METHOD"] = override
        return self.app(environ, start_response)
