"""Where an app keeps its rindle: ``app.extensions["rindle"]``."""

from __future__ import annotations

from flask import current_app, has_app_context

from rindle.core import Rindle

EXTENSION = "rindle"


def current_rindle() -> Rindle:
    """The rindle of the app handling this request or command."""
    return current_app.extensions[EXTENSION]


def app_context_rindle() -> Rindle | None:
    """The rindle of the current app context, if any (how jobs find it in-process)."""
    return current_app.extensions.get(EXTENSION) if has_app_context() else None
