"""The Flask side of rindle: the extension, the tus blueprint and the CLI. Only this
package imports Flask and werkzeug; it maps the core's errors to HTTP."""

from rindle.web.extension import init_app

__all__ = ["init_app"]
