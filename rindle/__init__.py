"""rindle: tus 1.0.0 resumable uploads for Flask, streamed into S3 multipart uploads."""

from typing import TYPE_CHECKING, Any

from rindle.config import Settings
from rindle.core import Rindle
from rindle.errors import ConfigError
from rindle.hooks import (
    Hooks,
    Refuse,
    upload_completed,
    upload_created,
    upload_expired,
    upload_failed,
    upload_progress,
    upload_received,
    upload_terminated,
)
from rindle.logs import configure as configure_logging
from rindle.storage import tail_path
from rindle.upload import State, Upload

if TYPE_CHECKING:
    from rindle.web import init_app

__all__ = [
    "ConfigError",
    "Hooks",
    "Refuse",
    "Rindle",
    "Settings",
    "State",
    "Upload",
    "configure_logging",
    "init_app",
    "tail_path",
    "upload_completed",
    "upload_created",
    "upload_expired",
    "upload_failed",
    "upload_progress",
    "upload_received",
    "upload_terminated",
]


def __getattr__(name: str) -> Any:
    """``init_app`` is the web layer's: imported when first asked for (PEP 562), so that
    ``import rindle`` (the RQ worker, the core's modules) loads no Flask."""
    if name == "init_app":
        from rindle.web import init_app

        globals()["init_app"] = init_app  # asked once
        return init_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
