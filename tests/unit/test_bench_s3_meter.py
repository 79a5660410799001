"""bench/s3_meter.py counts what reaches S3 to be stored, however the stream is cut."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import s3_meter


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:9"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def test_bodies_and_copies_are_counted_by_operation_across_any_read_boundaries():
    sizes = {("b", "tails/u/1"): 3000}
    stream = b"".join(
        [
            request("PUT", "/b/k?partNumber=1&uploadId=U", b"p" * 5000),
            request("PUT", "/b/tails/u/2", b"t" * 700),
            request("GET", "/b/k"),
            request("POST", "/b/k?uploadId=U", b"<CompleteMultipartUpload/>"),
            request(
                "PUT",
                "/b/k?partNumber=2&uploadId=U",
                x_amz_copy_source="/b/tails/u/1",
                x_amz_copy_source_range="bytes=100-1099",
            ),
            request("PUT", "/b/obj", x_amz_copy_source="/b/tails/u/1"),  # whole: HEAD
        ]
    )

    async def feed(piece: int) -> dict:
        proxy = s3_meter._Proxy(("127.0.0.1", 9), lambda b, k: sizes[(b, k)])
        side = s3_meter._Side(proxy, upstream=True)
        for start in range(0, len(stream), piece):
            side.data_received(stream[start : start + piece])
        await asyncio.sleep(0.1)  # the HEAD of the whole-object copy, in a thread
        return proxy.counts.snapshot()

    for piece in (1, 7, 4096, len(stream)):
        counts = asyncio.run(feed(piece))
        assert counts["bytes"] == {
            "upload_part": 5000,
            "put_object": 700,
            "upload_part_copy": 1000,
            "copy_object": 3000,
        }, piece
        assert counts["written"] == 9700
        assert counts["requests"]["get"] == 1 and counts["requests"]["post"] == 1
