"""Real services for development and tests: Redis, an S3 server, and the app's processes."""

from devstack.services import (
    ManagedProcess,
    RedisServer,
    SeaweedS3,
    ServiceFailed,
    ServiceUnavailable,
    free_port,
    free_ports,
)

__all__ = [
    "ManagedProcess",
    "RedisServer",
    "SeaweedS3",
    "ServiceFailed",
    "ServiceUnavailable",
    "free_port",
    "free_ports",
]
