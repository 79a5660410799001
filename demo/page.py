"""The upload page at ``/``: Uppy's Dashboard and its tus plugin, uploading to rindle.

Registered by ``app.py`` when ``RINDLE_DEMO=1`` (``scripts/run`` sets it); never part of
rindle's blueprint. Uppy's prebuilt bundle comes from ``demo/node_modules`` (``npm ci``,
see ``demo.assets``); without it the page says how to install it.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, send_from_directory

from demo import assets
from rindle.config import MIB
from rindle.web.context import current_rindle

blueprint = Blueprint(
    "demo",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/demo/static",
)

# The page runs no inline script and talks to its own origin only (tus requests and the
# readiness check of each finished file); Uppy sets inline styles and shows previews
# from blob: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


@blueprint.get("/")
def index() -> Response:
    settings = current_rindle().settings
    page = render_template(
        "rindle_demo.html",
        uppy_ready=assets.present(),
        part_mib=settings.part_size / MIB,
        download=settings.download,
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/demo/uppy/<name>")
def uppy_bundle(name: str) -> Response | tuple[Response, int]:
    """``uppy.min.js`` or ``uppy.min.css`` from the installed package; nothing else."""
    if name not in assets.BUNDLE_FILES:
        return jsonify(error="not_found", message=f"no such file: {name}"), 404
    if not (assets.BUNDLE_DIR / name).is_file():
        return jsonify(
            error="uppy_not_installed", message="run `python3 -m demo.assets` (needs npm)"
        ), 404
    return send_from_directory(assets.BUNDLE_DIR, name, max_age=3600)
