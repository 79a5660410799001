"""Redis work during bench.py's slow mode (issue #17): what open uploads cost Redis.

A ``RedisSampler`` polls ``INFO stats`` / ``INFO clients`` / ``INFO commandstats`` every
``interval`` seconds on a connection of its own while the slow clients run. After the run
it reports:

- commands per second per open upload, from ``total_commands_processed`` and, command by
  command, from ``commandstats``, over a window in which every client is mid-upload (from
  ``WINDOW_START`` to ``WINDOW_END`` of the ideal upload time, and before the first PATCH
  answer): the start (POSTs, first parts) and end (completions) bursts are left out. The
  sampler's own INFO calls are subtracted; the probe's POST+HEAD (a new client every
  ``--probe-interval``) is in the figure, as it is on a live server.
- the peak of ``connected_clients`` over the whole run (the sampler's own connection
  subtracted).
- ``MEMORY USAGE`` (exact: ``SAMPLES 0``) of the keys of one upload in progress, taken
  once mid-run (after the window), and of one finished upload after the run, with every
  key's TTL, and the RQ keys of its completion job.
- every key pattern in Redis after the run that has no TTL.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

WINDOW_START = 0.15  # of the ideal upload time (size / rate)
WINDOW_END = 0.7
SNAPSHOT_AT = 0.75  # when the in-progress upload is measured
UPLOAD_PATTERN = "rindle:upload:{*}"
# Upload ids (in a hash tag or a job id), RQ's worker names and job uuids: <id> in patterns.
_ID = re.compile(
    r"(?<=\{)[^}]+(?=\})|(?<=rindle-complete-)[\w-]+|(?<=rindle-cleanup-)[\w-]+"
    r"|[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


@dataclass
class Sample:
    at: float  # monotonic
    total: int  # total_commands_processed
    clients: int  # connected_clients
    calls: dict[str, int]  # command -> calls (commandstats)


@dataclass
class RedisSampler:
    url: str
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    in_progress: dict[str, Any] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url, decode_responses=True)

    def start(self, began: float, ideal: float) -> None:
        """Sample from now on; measure one in-progress upload at SNAPSHOT_AT of ``ideal``."""
        self._thread = threading.Thread(
            target=self._run, args=(began + SNAPSHOT_AT * ideal,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def commands_per_upload(self, start: float, end: float, uploads: int) -> float | None:
        """Commands per second per open upload between ``start`` and ``end`` (monotonic),
        from the first and last samples inside (None with fewer than two), less the
        sampler's own INFO calls."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2 or uploads < 1:
            return None
        a, b = inside[0], inside[-1]
        own = b.calls.get("info", 0) - a.calls.get("info", 0)
        return (b.total - a.total - own) / (b.at - a.at) / uploads

    def _sample(self) -> Sample:
        info = self.client.execute_command("INFO", "stats", "clients", "commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in info.items()
            if name.startswith("cmdstat_")
        }
        return Sample(
            time.monotonic(),
            int(info["total_commands_processed"]),
            int(info["connected_clients"]),
            calls,
        )

    def _run(self, snapshot_at: float) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            if self.in_progress is None and time.monotonic() >= snapshot_at:
                self.in_progress = self.measure_in_progress()
            self._stop.wait(self.interval)

    # ------------------------------------------------------------------ memory

    def usage(self, key: str) -> int:
        return int(self.client.memory_usage(key, samples=0) or 0)

    def keys_of(self, upload_id: str) -> list[dict[str, Any]]:
        """Each key of an upload: name, type, MEMORY USAGE, TTL (s; -1: none)."""
        found = []
        for key in sorted(self.client.scan_iter(match=f"rindle:upload:{{{upload_id}}}*")):
            found.append(
                {
                    "key": key,
                    "type": self.client.type(key),
                    "bytes": self.usage(key),
                    "ttl": self.client.ttl(key),
                    "fields": self.client.hlen(key) if self.client.type(key) == "hash" else None,
                    "encoding": self.client.object("encoding", key),
                }
            )
        return found

    def measure_in_progress(self) -> dict[str, Any] | None:
        """The receiving upload with the most committed parts right now."""
        best: tuple[int, str] | None = None
        for key in self.client.scan_iter(match=UPLOAD_PATTERN, count=1000):
            if self.client.hget(key, "state") != "receiving":
                continue
            upload_id = key[len("rindle:upload:{") : -1]
            parts = int(self.client.hlen(f"{key}:parts"))
            if best is None or parts > best[0]:
                best = (parts, upload_id)
        if best is None:
            return None
        keys = self.keys_of(best[1])
        return {"upload_id": best[1], "parts": best[0], "keys": keys}

    def measure_finished(self, upload_id: str, timeout: float = 30) -> dict[str, Any]:
        """A finished upload's keys, its expiry index entry and its RQ job's keys, once the
        worker has marked it completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.hget(f"rindle:upload:{{{upload_id}}}", "state") == "completed":
                break
            time.sleep(0.2)
        time.sleep(1.0)  # RQ stores the job's result after the job function returns
        rq_keys = []
        for key in sorted(self.client.scan_iter(match=f"rq:*{upload_id}*", count=1000)):
            rq_keys.append(
                {
                    "key": key,
                    "type": self.client.type(key),
                    "bytes": self.usage(key),
                    "ttl": self.client.ttl(key),
                }
            )
        registries = [
            key
            for key in self.client.scan_iter(match="rq:*", count=1000)
            if self.client.type(key) == "zset"
            and self.client.zscore(key, f"rindle-complete-{upload_id}") is not None
        ]
        return {
            "upload_id": upload_id,
            "keys": self.keys_of(upload_id),
            "in_expiry_index": self.client.zscore("rindle:expiry", upload_id) is not None,
            "rq_keys": rq_keys,
            "rq_registries": registries,
        }

    def keys_without_ttl(self) -> dict[str, int]:
        """Key patterns (ids replaced by <id>; a job's status in brackets) with no TTL,
        and how many keys each."""
        found: dict[str, int] = {}
        for key in self.client.scan_iter(count=1000):
            if self.client.ttl(key) == -1:
                pattern = _ID.sub("<id>", key)
                if key.startswith("rq:job:"):  # a job waits (queued, scheduled...)
                    pattern += f" [{self.client.hget(key, 'status')}]"
                found[pattern] = found.get(pattern, 0) + 1
        return found

    # ------------------------------------------------------------------ report

    def window(self, began: float, ideal: float, first_answer: float) -> tuple[Sample, Sample]:
        start = began + WINDOW_START * ideal
        end = min(began + WINDOW_END * ideal, first_answer - self.interval)
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            raise RuntimeError("too few Redis samples while every client was mid-upload")
        return inside[0], inside[-1]

    def report(
        self, began: float, ideal: float, first_answer: float, open_uploads: int, finished_id: str
    ) -> tuple[dict[str, Any], list[str]]:
        """The numbers (see the module) and the lines to print."""
        out: dict[str, Any] = {}
        lines: list[str] = []
        say = lines.append  # printed by the caller, with the run's other lines
        try:
            a, b = self.window(began, ideal, first_answer)
        except RuntimeError as exc:
            say(f"  redis commands          ({exc})")
            a = b = None
        if a is not None and b is not None:
            seconds = b.at - a.at
            own = b.calls.get("info", 0) - a.calls.get("info", 0)
            per_s = (b.total - a.total - own) / seconds
            by_command = {
                name: (b.calls.get(name, 0) - a.calls.get(name, 0)) / seconds
                for name in b.calls
                if name != "info"
            }
            top = sorted(by_command.items(), key=lambda kv: -kv[1])
            out.update(
                redis_window_s=round(seconds, 1),
                redis_window_from_s=round(a.at - began, 1),
                redis_commands_per_s=round(per_s, 1),
                redis_commands_per_s_per_upload=round(per_s / open_uploads, 2),
                redis_commands_per_s_per_upload_by_command={
                    name: round(rate / open_uploads, 3) for name, rate in top if rate > 0
                },
            )
            say(
                f"  redis commands          {per_s:.0f}/s over {seconds:.1f} s "
                f"({a.at - began:.1f}-{b.at - began:.1f} s after the start, {open_uploads} "
                f"uploads open): {per_s / open_uploads:.2f}/s per open upload (the probe's "
                "POST+HEAD included)"
            )
            shown = ", ".join(f"{name} {rate / open_uploads:.2f}" for name, rate in top[:10])
            say(f"    per upload, by command (commandstats): {shown}")
        peak = max((s.clients for s in self.samples), default=0) - 1
        out["redis_peak_connected_clients"] = peak
        say(f"  redis connections       peak {peak} connected_clients (not the sampler's)")
        if self.in_progress is not None:
            keys = self.in_progress["keys"]
            total = sum(k["bytes"] for k in keys)
            out["redis_bytes_in_progress"] = total
            out["redis_in_progress_parts"] = self.in_progress["parts"]
            say(
                f"  redis memory, open      {total} B for one upload with "
                f"{self.in_progress['parts']} parts: {_keys_line(keys)}"
            )
        finished = self.measure_finished(finished_id)
        total = sum(k["bytes"] for k in finished["keys"])
        rq_total = sum(k["bytes"] for k in finished["rq_keys"])
        out.update(
            redis_bytes_finished=total,
            redis_bytes_finished_rq=rq_total,
            redis_finished_keys=finished["keys"],
            redis_finished_rq_keys=finished["rq_keys"],
        )
        say(
            f"  redis memory, finished  {total} B: {_keys_line(finished['keys'])}; "
            f"in the expiry index: {finished['in_expiry_index']}"
        )
        say(
            f"    its completion job    {rq_total} B: {_keys_line(finished['rq_keys'])}; "
            f"also in {', '.join(finished['rq_registries']) or 'no registry'}"
        )
        no_ttl = self.keys_without_ttl()
        out["redis_keys_without_ttl"] = no_ttl
        shown = ", ".join(f"{k} ({n})" for k, n in sorted(no_ttl.items())) or "none"
        say(f"  redis keys without TTL  {shown}")
        return out, lines

    def close(self) -> None:
        self.stop()
        self.client.close()


def _keys_line(keys: list[dict[str, Any]]) -> str:
    parts = []
    for k in keys:
        name = _ID.sub("<id>", k["key"])
        fields = f", {k['fields']} fields" if k.get("fields") is not None else ""
        fields += f", {k['encoding']}" if k.get("encoding") else ""
        ttl = "no TTL" if k["ttl"] == -1 else f"TTL {k['ttl']} s"
        parts.append(f"{name} {k['bytes']} B ({k['type']}{fields}, {ttl})")
    return "; ".join(parts) or "no keys"
