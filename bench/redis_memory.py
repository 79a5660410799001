#!/usr/bin/env python
"""What one upload record costs Redis (issue #17), measured on a private redis-server
with rindle's own store, lease and job queue writing the records::

    python bench/redis_memory.py            # the table, and the capacity of Heroku's plans
    python bench/redis_memory.py --json

For each profile and N committed parts: ``MEMORY USAGE ... SAMPLES 0`` (exact) of each
key of an upload in progress (its hash, its parts hash, the writer lease of an open
PATCH) and of the same upload finished (the tombstone: hash and parts, 7 days), and the
growth of ``used_memory`` per upload over ``--count`` such uploads, which also counts
what MEMORY USAGE leaves out: the keyspace's and the expiry dict's entries, the expiry
index entry (``rindle:expiry``) and the allocator's rounding. Also: an expiry index
entry alone, a queued completion job (RQ), a Redis connection, and an empty server.

Profiles: ``bench`` is what bench.py's slow mode writes (a short file name, SeaweedFS's
multipart upload ids of 73 characters); ``uppy`` is a browser upload through Uppy/tus-js-client
(metadata ``filename``, ``filetype``, ``name``, ``type``, ``relativePath``: ~120
bytes) to AWS S3 (multipart upload ids of ~130 characters). A hash field over 64 bytes
makes Redis store the hash as a hash table instead of a listpack (``hash-max-listpack-
value``, 64 by default): S3's upload ids alone (73 characters on SeaweedFS, ~130 on AWS)
make every upload's hash one; a parts hash over 128 parts (``hash-max-listpack-entries``)
is one too.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402
from rq import Queue  # noqa: E402

from devstack import RedisServer  # noqa: E402
from rindle.jobqueue import JobQueue  # noqa: E402
from rindle.keys import EXPIRY_INDEX, parts_key, upload_key, writer_key  # noqa: E402
from rindle.lease import new_token  # noqa: E402
from rindle.store import UploadStore  # noqa: E402
from rindle.upload import State  # noqa: E402

PART_SIZE = 8 * 1024 * 1024  # rindle's default
NODE = "web.1:/tmp/rindle-1000"  # RINDLE_NODE_ID's default shape: host name + tmp dir
PARTS = (1, 10, 100, 1000)
MIB = 1024 * 1024


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


PROFILES: dict[str, dict[str, Any]] = {
    "bench": {
        "metadata": f"filename {b64('slow-17.bin')}",
        # SeaweedFS's: 40 hex digits, "_", 32 hex digits.
        "s3_upload_id": lambda: secrets.token_hex(20) + "_" + secrets.token_hex(16),
    },
    "uppy": {
        "metadata": ",".join(
            f"{name} {b64(value)}"
            for name, value in (
                ("relativePath", "null"),
                ("name", "holiday-2026-video.mp4"),
                ("type", "video/mp4"),
                ("filetype", "video/mp4"),
                ("filename", "holiday-2026-video.mp4"),
            )
        ),
        # AWS's UploadIds run to ~130 URL-safe characters.
        "s3_upload_id": lambda: secrets.token_urlsafe(96)[:130],
    },
}


def _pattern(key: str) -> str:
    return key.split("rindle-complete-")[0] + "rindle-complete-<id>" if "complete-" in key else key


def etag(number: int) -> str:
    return '"' + hashlib.md5(str(number).encode()).hexdigest() + '"'


class Lab:
    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.store = UploadStore(self.redis, expiration=86400, lease_seconds=60)

    def used(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def usage(self, key: str) -> int:
        return int(self.redis.memory_usage(key, samples=0) or 0)

    def in_progress(self, profile: dict[str, Any], parts: int) -> tuple[str, str]:
        """An upload receiving bytes: N parts committed, a tail of 3 MiB acknowledged,
        a PATCH open (its writer lease held). Returns (upload id, lease token)."""
        upload_id = secrets.token_urlsafe(24)  # as the blueprint makes them
        length = parts * PART_SIZE + 5 * MIB
        self.store.create(upload_id, length, PART_SIZE, f"uploads/{upload_id}", profile["metadata"])
        token = new_token()
        self.redis.set(writer_key(upload_id), token, px=self.store.lease_ms)
        self.store.save_s3_upload_id(upload_id, token, profile["s3_upload_id"]())
        offset = 0
        for number in range(1, parts + 1):
            part = (number, etag(number), PART_SIZE)
            self.store.commit_part(upload_id, token, offset, offset + PART_SIZE, part, NODE)
            offset += PART_SIZE
        self.store.commit_offset(upload_id, token, offset, offset + 3 * MIB, NODE)
        return upload_id, token

    def finish(self, upload_id: str) -> None:
        """What the last PATCH and the completion job leave: the lease released, the
        state completed (a tombstone for 7 days), out of the expiry index."""
        self.redis.delete(writer_key(upload_id))
        self.store.set_state(upload_id, State.ASSEMBLING, (State.RECEIVING,))
        self.store.set_state(upload_id, State.COMPLETED, (State.ASSEMBLING,))

    def keys(self, upload_id: str) -> dict[str, dict[str, Any]]:
        found = {}
        for name, key in (
            ("hash", upload_key(upload_id)),
            ("parts", parts_key(upload_id)),
            ("writer", writer_key(upload_id)),
        ):
            if self.redis.exists(key):
                found[name] = {
                    "bytes": self.usage(key),
                    "ttl": self.redis.ttl(key),
                    "encoding": self.redis.object("encoding", key),
                }
        return found

    def per_upload(self, profile: dict[str, Any], parts: int, count: int) -> tuple[float, float]:
        """used_memory growth per upload over ``count`` uploads: in progress, finished."""
        self.redis.flushall()
        before = self.used()
        ids = [self.in_progress(profile, parts)[0] for _ in range(count)]
        during = self.used()
        for upload_id in ids:
            self.finish(upload_id)
        self.redis.delete(EXPIRY_INDEX)  # empty by now; an empty zset is deleted anyway
        after = self.used()
        return (during - before) / count, (after - before) / count

    def expiry_entry(self, count: int) -> float:
        self.redis.flushall()
        before = self.used()
        for _ in range(count):
            self.store.index_expiry(secrets.token_urlsafe(24), time.time() + 86400)
        return (self.used() - before) / count

    def queued_job(self, count: int) -> dict[str, Any]:
        """A completion job as enqueued (RQ), before a worker takes it: its keys, and
        used_memory growth per job over ``count`` jobs (after a first one, which loads
        RQ's scripts and opens the connection)."""
        self.redis.flushall()
        jobs = JobQueue(Queue("rindle", connection=redis.Redis(**self._kwargs())))
        jobs.complete(secrets.token_urlsafe(24))
        keys = {
            _pattern(key): {"bytes": self.usage(key), "ttl": self.redis.ttl(key)}
            for key in self.redis.scan_iter()
        }
        before = self.used()
        for _ in range(count):
            jobs.complete(secrets.token_urlsafe(24))
        return {"used_memory_per_job": (self.used() - before) / count, "keys": keys}

    def connection(self, count: int = 50) -> float:
        before = self.used()
        clients = [redis.Redis(**self._kwargs()) for _ in range(count)]
        for c in clients:
            c.ping()
        grown = (self.used() - before) / count
        for c in clients:
            c.close()
        return grown

    def _kwargs(self) -> dict[str, Any]:
        kw = self.redis.connection_pool.connection_kwargs
        return {"host": kw["host"], "port": kw["port"], "db": kw.get("db", 0)}


def measure(count: int) -> dict[str, Any]:
    with RedisServer() as server:
        lab = Lab(server.url)
        lab.redis.flushall()
        out: dict[str, Any] = {
            "redis_version": lab.redis.info("server")["redis_version"],
            "empty_used_memory": lab.used(),
            "expiry_index_entry": lab.expiry_entry(count),
            "queued_completion_job": lab.queued_job(count),
            "connection": lab.connection(),
            "profiles": {},
        }
        for name, profile in PROFILES.items():
            rows = []
            for parts in PARTS:
                lab.redis.flushall()
                upload_id, _ = lab.in_progress(profile, parts)
                open_keys = lab.keys(upload_id)
                lab.finish(upload_id)
                done_keys = lab.keys(upload_id)
                # 1000 parts take a transaction each: fewer uploads for that row.
                n = count if parts < 1000 else max(10, count // 10)
                growth_open, growth_done = lab.per_upload(profile, parts, n)
                rows.append(
                    {
                        "parts": parts,
                        "open_keys": open_keys,
                        "finished_keys": done_keys,
                        "open_used_memory_per_upload": round(growth_open),
                        "finished_used_memory_per_upload": round(growth_done),
                    }
                )
            out["profiles"][name] = rows
        lab.redis.close()
    return out


def print_report(out: dict[str, Any]) -> None:
    print(f"Redis {out['redis_version']}; an empty server uses {out['empty_used_memory']} B")
    print(
        f"expiry index entry: {out['expiry_index_entry']:.0f} B (used_memory growth per "
        f"entry); a connection: {out['connection']:.0f} B"
    )
    job = out["queued_completion_job"]
    keys = "; ".join(f"{k} {v['bytes']} B (TTL {v['ttl']})" for k, v in sorted(job["keys"].items()))
    print(f"queued completion job: used_memory +{job['used_memory_per_job']:.0f} B each: {keys}")
    for name, rows in out["profiles"].items():
        print(f"\nprofile {name}:")
        print(
            f"{'parts':>6} | {'open: hash + parts + lease (MEMORY USAGE)':44} | "
            f"{'used_memory/upload':>18} | {'finished: hash + parts':26} | "
            f"{'used_memory/upload':>18}"
        )
        for row in rows:
            o, f = row["open_keys"], row["finished_keys"]
            open_txt = " + ".join(
                f"{o[k]['bytes']}{'' if k == 'writer' else ' ' + o[k]['encoding'][:2]}"
                for k in ("hash", "parts", "writer")
                if k in o
            )
            open_txt += f" = {sum(v['bytes'] for v in o.values())}"
            done_txt = " + ".join(str(f[k]["bytes"]) for k in ("hash", "parts") if k in f)
            done_txt += f" = {sum(v['bytes'] for v in f.values())}"
            print(
                f"{row['parts']:>6} | {open_txt:44} | {row['open_used_memory_per_upload']:>18} | "
                f"{done_txt:26} | {row['finished_used_memory_per_upload']:>18}"
            )
        ttls = {k: v["ttl"] for k, v in rows[0]["finished_keys"].items()}
        print(f"  finished keys' TTLs (s): {ttls}")
    print_capacity(out)


# Heroku's plans: memory (taken as MiB) and connection limit.
HEROKU = (("Mini", 25 * MIB, 20), ("Premium-0", 50 * MIB, 40))


def print_capacity(out: dict[str, Any]) -> None:
    """Concurrent uploads in progress that fit, after Redis's own baseline and one
    connection's memory per connection the plan allows; no tombstones, no RQ jobs."""
    print("\nconcurrent uploads in progress that fit (used_memory per upload; the plan")
    print("minus an empty server and the plan's connection limit x one connection):")
    for name, memory, connections in HEROKU:
        room = memory - out["empty_used_memory"] - connections * out["connection"]
        cells = []
        for profile, rows in out["profiles"].items():
            for row in rows[:3]:
                fits = room // row["open_used_memory_per_upload"]
                cells.append(f"{profile}/{row['parts']}p {fits:,.0f}")
        finished = out["profiles"]["uppy"][1]["finished_used_memory_per_upload"]
        print(
            f"  {name} ({memory // MIB} MiB, {connections} connections, {room / MIB:.1f} MiB "
            f"left): {', '.join(cells)}; or {room // finished:,.0f} finished uploads "
            f"(uppy, 10 parts) kept 7 days"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=100, help="uploads per used_memory figure (100)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    out = measure(args.count)
    print_report(out)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
