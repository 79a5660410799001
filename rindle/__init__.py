"""rindle: tus 1.0.0 resumable uploads for Flask, streamed into S3 multipart uploads."""

from rindle.config import Settings
from rindle.extension import init_app
from rindle.storage import tail_path

__all__ = ["Settings", "init_app", "tail_path"]
