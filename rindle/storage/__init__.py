"""Where bytes live: S3 for parts and objects, a node-local file for the tail."""

from rindle.storage.s3 import (
    S3_ERRORS,
    MultipartGone,
    S3Storage,
    error_code,
    make_s3_client,
    s3_client_for,
)
from rindle.storage.tail import (
    SpoolFile,
    Tail,
    TailLocked,
    check_tail_dir,
    scan_tails,
    tail_path,
    try_remove_idle_tail,
    upload_id_from_tail,
)

__all__ = [
    "S3_ERRORS",
    "MultipartGone",
    "S3Storage",
    "SpoolFile",
    "Tail",
    "TailLocked",
    "check_tail_dir",
    "error_code",
    "make_s3_client",
    "s3_client_for",
    "scan_tails",
    "tail_path",
    "try_remove_idle_tail",
    "upload_id_from_tail",
]
