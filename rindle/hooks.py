"""What an application can hook into: blinker signals, and callbacks that decide.

Signals (blinker, like Flask's own; the sender is the Flask app, ``upload`` the upload
as it is now):

- ``upload_created``, ``upload_progress`` (a PATCH moved the offset),
  ``upload_received`` (every byte is in S3), ``upload_terminated``: in the web process;
- ``upload_completed``, ``upload_expired``, ``upload_failed``: in the RQ worker, which
  imports the app named by RINDLE_APP (default ``app:app``) so that its receivers are
  connected there too.

Callbacks (given to ``rindle.init_app(app, hooks=Hooks(...))``):

- ``pre_create(request, length, metadata, upload_id) -> str | None``: raise ``Refuse``
  to refuse the upload, or return the object key to use (default: RINDLE_S3_PREFIX + id);
  the key must stay under RINDLE_S3_PREFIX (``upload_id`` may be left out of the hook's
  parameters);
- ``pre_length(request, upload, length)``: the length of an upload created without one
  (``Upload-Defer-Length``; the draft's creation without a length) becomes known:
  ``length`` is what the request declares, ``upload`` the upload as recorded (its
  ``length`` None). Raise ``Refuse`` to refuse the request (the length is not recorded,
  no byte of it is read), with the same answer as a ``pre_create`` refusal: a quota that
  ``pre_create`` checks must check here too, or a deferred length bypasses it;
- ``authorize(request, action, upload)``: called on every request (``action`` is one of
  create, head, patch, delete, get; ``upload`` is None for create), and for each partial
  a final upload names (``concat``, with that partial); raise ``Refuse``.

And RINDLE_ON_COMPLETE, a dotted function name: the completion job enqueues an RQ job
of its own, once, that calls it with ``upload_id``, ``key``, ``size`` and ``metadata`` (a
dict of str) read from the upload's record when the job runs (the job carries the id
only; a record gone by then, a week after completion, or a terminated upload: no call).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blinker import Namespace

from rindle.upload import Upload

_signals = Namespace()
upload_created = _signals.signal("rindle.upload-created")
upload_progress = _signals.signal("rindle.upload-progress")
upload_received = _signals.signal("rindle.upload-received")
upload_completed = _signals.signal("rindle.upload-completed")
upload_terminated = _signals.signal("rindle.upload-terminated")
upload_expired = _signals.signal("rindle.upload-expired")
upload_failed = _signals.signal("rindle.upload-failed")


class Refuse(Exception):
    """Raised by a hook to refuse a request: answered with ``status`` (4xx) and a JSON
    body ``{"error": code, "message": message}``."""

    def __init__(self, message: str, status: int = 403, code: str = "refused") -> None:
        if not 400 <= status < 500:
            raise ValueError("a refusal is a 4xx answer")
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


PreCreate = Callable[..., str | None]
PreLength = Callable[[Any, Upload, int], None]
Authorize = Callable[[Any, str, Upload | None], None]


@dataclass(frozen=True)
class Hooks:
    pre_create: PreCreate | None = None
    authorize: Authorize | None = None
    # Not pre_create again: it chooses the key and may count the upload (a quota), and
    # both happened already; this one only decides.
    pre_length: PreLength | None = None


def choose_key(
    pre_create: PreCreate,
    request: Any,
    length: int | None,
    metadata: dict[str, str | None],
    upload_id: str,
) -> str | None:
    """Call the app's pre_create hook, with ``upload_id`` if it takes one."""
    params = inspect.signature(pre_create).parameters.values()
    if any(p.name == "upload_id" or p.kind is p.VAR_KEYWORD for p in params):
        return pre_create(request, length, metadata, upload_id=upload_id)  # type: ignore[call-arg]
    return pre_create(request, length, metadata)


def metadata_dict(raw: dict[str, bytes | None]) -> dict[str, str | None]:
    """Metadata for applications: values as text (undecodable bytes replaced)."""
    return {k: None if v is None else v.decode("utf-8", "replace") for k, v in raw.items()}
