"""Where bytes live: S3 for parts and objects, a node-local file for the tail."""

from rindle.storage.s3 import S3Storage, make_s3_client
from rindle.storage.tail import Tail, tail_path, try_remove_idle_tail, upload_id_from_tail

__all__ = [
    "S3Storage",
    "Tail",
    "make_s3_client",
    "tail_path",
    "try_remove_idle_tail",
    "upload_id_from_tail",
]
