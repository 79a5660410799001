"""A Rindle builds each service once, whatever the number of threads asking at once
(issue #21, item 10): ``functools.cached_property`` has no lock since Python 3.12."""

from __future__ import annotations

import threading
import time

import rindle.core
from rindle.config import Settings
from rindle.core import Rindle
from rindle.lease import ReleaseWatcher

THREADS = 16


def test_many_first_requests_at_once_build_one_release_watcher(tmp_path, monkeypatch):
    built: list[ReleaseWatcher] = []

    class SlowWatcher(ReleaseWatcher):
        def __init__(self, *args, **kwargs) -> None:
            time.sleep(0.2)  # a slow build: every thread arrives while the first builds
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(rindle.core, "ReleaseWatcher", SlowWatcher)
    core = Rindle(Settings.from_env({"RINDLE_TMP_DIR": str(tmp_path)}))
    start = threading.Barrier(THREADS)
    seen: list[tuple[object, object, object]] = []

    def first_request() -> None:
        start.wait()
        seen.append((core.watcher, core.writer, core.lease))

    threads = [threading.Thread(target=first_request) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1, f"{len(built)} release watchers were built"
    assert len(seen) == THREADS
    watchers, writers, leases = (set(map(id, column)) for column in zip(*seen, strict=True))
    assert watchers == {id(built[0])}
    assert len(writers) == 1 and len(leases) == 1
    # Every writer stops through the one watcher a SIGTERM stops.
    assert seen[0][1].watcher is built[0]
    assert core.stopping == ""
