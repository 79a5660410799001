"""Real services for development and tests: Redis, an S3 server, and the app's processes."""

from devstack.services import (
    WORKER_CLASS,
    ManagedProcess,
    RedisServer,
    SeaweedS3,
    ServiceFailed,
    ServiceUnavailable,
    clock_command,
    free_port,
    free_ports,
    procfile_command,
    web_command,
    worker_command,
)
from devstack.stack import Stack, private_services, stack_env

__all__ = [
    "WORKER_CLASS",
    "ManagedProcess",
    "RedisServer",
    "SeaweedS3",
    "ServiceFailed",
    "ServiceUnavailable",
    "Stack",
    "clock_command",
    "free_port",
    "free_ports",
    "private_services",
    "procfile_command",
    "stack_env",
    "web_command",
    "worker_command",
]
