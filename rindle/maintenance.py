"""Ending uploads and cleaning up after them, so that nothing leaks: no multipart upload
left open in S3, no tail left on a disk, no Redis key without an expiry.

Every operation is idempotent and safe to run on several workers at once: state changes
are WATCH/MULTI transitions that only one caller wins, aborts of an already-aborted
upload count as done, and a tail is only deleted when no writer holds its lock.
Used by the RQ jobs (``rindle.jobs``), the CLI and the tail reaper of each web process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import redis
from blinker import NamedSignal

from rindle import hooks
from rindle.config import Settings
from rindle.jobqueue import JobQueue
from rindle.lease import Lease
from rindle.storage import (
    S3_ERRORS,
    S3Storage,
    scan_tails,
    try_remove_idle_tail,
    upload_id_from_tail,
)
from rindle.storage.s3 import NotDeleted
from rindle.storage.shared_tail import SharedTails
from rindle.store import ASSEMBLY_CHECK_SECONDS, UploadStore
from rindle.upload import OPEN, WRITABLE, State, Upload

log = logging.getLogger("rindle.maintenance")
SWEEP_BATCH = 1000  # due uploads read from the expiry index at a time


@dataclass
class Maintenance:
    store: UploadStore
    s3: S3Storage
    shared: SharedTails
    settings: Settings
    jobs: JobQueue
    lease: Lease  # the process's own (rindle.core): only ``held`` is asked of it
    notify: Callable[[NamedSignal, Upload], None] = lambda signal, upload: None

    def clean_up(self, upload_id: str) -> str:
        """After termination or expiry: abort the multipart upload and delete the shared
        tails; a terminated upload's object is deleted too if it is still the one this
        upload wrote. Raises on S3 errors (retry)."""
        upload = self.store.get(upload_id)
        if upload is None:
            return "unknown"
        if upload.state in OPEN or upload.state == State.COMPLETED:
            return f"skipped ({upload.state})"
        aborted = bool(upload.s3_upload_id) and self.s3.abort_multipart(
            upload.key, upload.s3_upload_id
        )
        if upload.state == State.TERMINATED:
            # Only the object this upload wrote: a pre_create key may be shared.
            self.s3.delete_object_if(upload.key, upload.object_etag)
        self.shared.delete_all(upload_id)
        return "aborted" if aborted else "nothing to abort"

    def sweep_expired(self, now: float | None = None, dry_run: bool = False) -> dict[str, int]:
        """Mark uploads past their expiry as expired and abort their multipart uploads;
        re-enqueue completion of uploads stuck in assembling."""
        now = time.time() if now is None else now
        counts: Counter[str] = Counter(expired=0, aborted=0, requeued=0, errors=0)
        stayed = 0  # entries of the pages read so far that are still due, in front
        while batch := self.store.due_for_sweep(now, start=stayed, limit=SWEEP_BATCH):
            for upload_id in batch:
                if dry_run:
                    upload = self.store.get(upload_id)
                    if upload and upload.state in WRITABLE and upload.expires_at <= now:
                        counts["expired"] += 1
                    stayed += 1
                elif not self._sweep_one(upload_id, now, counts):
                    stayed += 1
        return dict(counts)

    def _sweep_one(self, upload_id: str, now: float, counts: Counter[str]) -> bool:
        """Expire, re-enqueue or forget one due upload; False when it stays due (its
        writer holds the lease, or it lost a race), to be looked at next time."""
        upload = self.store.get(upload_id)
        if upload is None:
            self.store.unindex(upload_id)  # its keys are gone: nothing left to end
        elif upload.state in WRITABLE:
            if upload.expires_at > now:  # active again, and its entry is stale
                self.store.index_expiry(upload_id, upload.expires_at)
            elif self.store.set_state(upload_id, State.EXPIRED, WRITABLE, before=now):
                counts["expired"] += 1
                counts[self._abort_quietly(upload)] += 1
                self.notify(hooks.upload_expired, replace(upload, state=State.EXPIRED))
            else:
                return False  # a request is writing it: activity, not expiry
        elif upload.state == State.ASSEMBLING:
            # The completion job never finished: try again, and look again later.
            if self.jobs.ensure_completion(upload_id):
                counts["requeued"] += 1
            self.store.index_expiry(upload_id, now + ASSEMBLY_CHECK_SECONDS)
        else:
            self.store.unindex(upload_id)
        return True

    def _abort_quietly(self, upload: Upload) -> str:
        if not upload.s3_upload_id:
            return "nothing to abort"
        try:
            self.s3.abort_multipart(upload.key, upload.s3_upload_id)
        except S3_ERRORS as exc:
            # The orphan sweep aborts it later: nothing references it any more.
            log.warning("upload %s: abort failed, left to the orphan sweep: %s", upload.id, exc)
            return "errors"
        return "aborted"

    @property
    def shared_mode(self) -> bool:
        return self.settings.tail_store == "s3"

    def reap_tails(
        self, root: str | None = None, now: float | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete this node's tails whose upload is ended, unknown or past its expiry, and
        in shared tail mode also those of live uploads whose bytes another node holds
        now (stale caches: the next resume here fetches the shared copy).

        A live upload's tail is never touched otherwise, nor a tail a writer holds.
        """
        root = root or self.settings.tmp_dir
        now = time.time() if now is None else now
        counts: Counter[str] = Counter(deleted=0, kept=0, busy=0)
        for entry in scan_tails(root):
            upload_id = upload_id_from_tail(entry.path, root)
            live = False
            if upload_id is None:
                # Not a name tail_path makes: only remove it once it is old.
                if entry.stat().st_mtime > now - self.settings.expiration:
                    counts["kept"] += 1
                    continue
            else:
                upload = self.store.get(upload_id)
                live = self._live(upload, now)
                # In shared mode a file here is only a cache, and only while Redis names
                # this node: otherwise a resume here fetches the shared copy anyway.
                if live and not (self.shared_mode and upload.node != self.settings.node_id):
                    counts["kept"] += 1
                    continue
            if dry_run or try_remove_idle_tail(entry.path):
                counts["deleted"] += 1
                if upload_id and not live and not dry_run and self.shared_mode:
                    self.shared.delete_all(upload_id)  # an ended upload's shared copies too
            else:
                counts["busy"] += 1
        return dict(counts)

    def _live(self, upload: Upload | None, now: float) -> bool:
        """Writable, and not past its expiry or being written to: a writer holding the
        lease is activity (as for the expiry sweep), and its next commit moves the
        expiry. Its shared copies, which that writer may be reading, must stay."""
        return bool(
            upload is not None
            and upload.state in WRITABLE
            and (upload.expires_at > now or self.lease.held(upload.id))
        )

    def abort_orphans(
        self, grace: int, now: float | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Abort multipart uploads under the prefix that no open upload references and
        that are older than ``grace`` seconds (a writer saves a new one's id at once)."""
        now = time.time() if now is None else now
        counts: Counter[str] = Counter(aborted=0, kept=0, young=0)
        listed = []
        for key, s3_upload_id, initiated in self.s3.list_multipart_uploads(self.settings.s3_prefix):
            if initiated.timestamp() > now - grace:
                counts["young"] += 1
            else:
                listed.append((key, s3_upload_id))
        # Read after listing: a multipart upload created meanwhile is young, hence kept.
        referenced = self.store.open_multipart_ids(OPEN) if listed else set()
        for key, s3_upload_id in listed:
            if s3_upload_id in referenced:
                counts["kept"] += 1
                continue
            if not dry_run:
                self.s3.abort_multipart(key, s3_upload_id)
            counts["aborted"] += 1
        return dict(counts)

    def sweep_orphans(self, grace: int, dry_run: bool = False) -> dict[str, int]:
        """What no upload references any more: multipart uploads and shared tails."""
        return {
            **self.abort_orphans(grace, dry_run=dry_run),
            **self.sweep_shared_tails(grace, dry_run=dry_run),
        }

    def sweep_shared_tails(
        self, grace: int, now: float | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete shared tails in S3 that no writable upload records, once older than
        ``grace`` seconds (a writer puts a new one just before it commits it), and never
        one of an upload whose writer holds the lease (it may be putting or reading
        any of them). Keys S3 refuses to delete are counted (``tails_errors``), logged,
        and tried next time."""
        now = time.time() if now is None else now
        counts: Counter[str] = Counter(tails_deleted=0, tails_kept=0)  # tails_errors if any
        doomed = []
        uploads: dict[str, Upload | None] = {}  # asked once per upload, not per copy
        writing: dict[str, bool] = {}  # upload id -> its lease is held (asked once)
        for upload_id, key, modified in self.shared.listing():
            if modified.timestamp() > now - grace:
                counts["tails_kept"] += 1
                continue
            if upload_id not in uploads:
                uploads[upload_id] = self.store.get(upload_id)
            upload = uploads[upload_id]
            if upload is not None and upload.state in WRITABLE:
                if key in upload.shared_keys:
                    counts["tails_kept"] += 1
                    continue
                if upload_id not in writing:
                    writing[upload_id] = self.lease.held(upload_id)
                if writing[upload_id]:
                    counts["tails_kept"] += 1
                    continue
            doomed.append(key)
        for start in range(0, len(doomed), 1000):
            batch = doomed[start : start + 1000]
            try:
                if not dry_run:
                    self.s3.delete_objects(batch)
            except NotDeleted as exc:
                log.warning("shared tails: %d not deleted: %s", len(exc.errors), exc.errors[:10])
                counts["tails_errors"] += len(exc.errors)
                counts["tails_deleted"] += len(batch) - len(exc.errors)
            else:
                counts["tails_deleted"] += len(batch)
        return dict(counts)


class TailReaper:
    """Reaps this node's tails every ``interval`` seconds, in a thread of a process that
    writes tails (a worker elsewhere cannot see them). Several processes of one node
    may run one: a per-node lock in Redis lets one of them reap per interval."""

    def __init__(self, maintenance: Maintenance, client: redis.Redis, interval: int) -> None:
        self.maintenance = maintenance
        self.redis = client
        self.interval = interval
        self._pid = 0  # the process the thread runs in (a fork has none)
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process, once (cheap to call on every PATCH)."""
        if self.interval <= 0 or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="rindle-tail-reaper", daemon=True).start()

    def _run(self) -> None:
        settings = self.maintenance.settings
        lock = f"rindle:reaper:{settings.node_id}:{settings.tmp_dir}"
        while True:
            time.sleep(self.interval)
            try:
                if self.redis.set(lock, "1", nx=True, ex=max(1, self.interval - 1)):
                    log.info("tail reaper: %s", self.maintenance.reap_tails())
            except Exception:  # keep reaping next time; never take the web process down
                log.exception("tail reaper failed")
