"""S3 adapter: multipart uploads and objects. Knows nothing of Flask or Redis."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# What an S3 call raises when S3 fails or refuses: callers catch this, not botocore's.
S3_ERRORS = (BotoCoreError, ClientError)


# boto3's "standard" retry mode, chosen on purpose over "adaptive": adaptive's client-side
# rate limiter is one token bucket per client, and one client serves every request thread
# and part-upload thread of a process, so a SlowDown on one upload's key would block the
# threads of every other upload (each holding its writer lease) until the bucket refills.
# Standard mode backs off only the request that failed: 503 SlowDown, 500, 502, 504,
# RequestTimeout and dropped connections are retried with jittered exponential back-off
# (up to 1, 2, 4, 8 s for throttling; tens of ms for the rest) under a retry quota per
# client that stops retries while S3 keeps failing. Five attempts in all (the old
# ``max_attempts: 3`` meant three retries, four attempts: botocore counts retries there)
# ride out a SlowDown burst of several seconds; a longer one ends the PATCH with 503
# storage_unavailable + Retry-After, keeping what was committed; the completion job is
# retried by RQ (rindle.jobqueue.RETRY_INTERVALS).
S3_RETRIES: dict = {"mode": "standard", "total_max_attempts": 5}


def make_s3_client(
    max_pool_connections: int = 32, path_style: bool = False, sign_payload: bool = True
) -> BaseClient:
    """A boto3 S3 client that works with S3-compatible stores (endpoint and credentials
    from boto3's own variables).

    Checksums only when an operation requires them (boto3 >= 1.36 otherwise sends CRC
    trailers that R2, B2 and older MinIO reject), a pool sized for the request threads,
    path-style addressing for custom endpoints (``path_style``), and SigV4 for presigned
    URLs too (botocore would presign with SigV2, which newer AWS regions refuse).
    ``sign_payload=False`` sends bodies as UNSIGNED-PAYLOAD instead of hashing every byte
    with SHA-256 for the signature (without a checksum header botocore hashes them even
    over HTTPS): for an HTTPS endpoint, where TLS already protects the bytes.
    """
    config = Config(
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=60,
        retries=S3_RETRIES,
        s3={
            **({"addressing_style": "path"} if path_style else {}),
            "payload_signing_enabled": sign_payload,
        },
    )
    return boto3.session.Session().client("s3", config=config)


def s3_client_for(endpoint: str, pool: int) -> BaseClient:
    """The client for the app's S3 endpoint (``""`` for AWS itself: HTTPS): path-style
    addressing for a custom endpoint, payloads signed only over plain HTTP to another
    host. On loopback (an S3 gateway on this host; the dev stack, tests and benchmarks)
    the bytes cross no network that the signature would guard, and hashing every body
    byte with SHA-256 cost ~0.8 s of CPU per GiB, a third of a PATCH's (issue #19)."""
    host = urlsplit(endpoint).hostname or ""
    with contextlib.suppress(ValueError):
        host = "localhost" if ipaddress.ip_address(host).is_loopback else host
    signed = endpoint.startswith("http:") and host != "localhost"
    return make_s3_client(pool, path_style=bool(endpoint), sign_payload=signed)


class MultipartGone(Exception):
    """S3 no longer knows the multipart upload (aborted: a lifecycle rule, by hand)."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# Per-key answers of DeleteObjects that mean the object is not there: deleted, as asked.
_ALREADY_GONE = ("NoSuchKey", "NotFound", "404")


class NotDeleted(ClientError):
    """DeleteObjects answered 200 but refused some keys (its ``Errors`` list): a
    ClientError, so that whoever handles S3's refusals handles this one too.
    ``errors``: (key, code, message) of each refused key."""

    def __init__(self, errors: list[tuple[str, str, str]]) -> None:
        key, code, message = errors[0]
        super().__init__(
            {
                "Error": {
                    "Code": code,
                    "Message": f"{len(errors)} object(s) not deleted, first {key!r}: {message}",
                }
            },
            "DeleteObjects",
        )
        self.errors = errors


class S3Storage:
    """The bucket's multipart uploads and objects; boto3's exceptions pass through."""

    def __init__(self, client: BaseClient, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def create_multipart(self, key: str, headers: Mapping[str, str] | None = None) -> str:
        """``headers``: object attributes such as ContentType and ContentDisposition."""
        response = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **(headers or {})
        )
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: BinaryIO, size: int) -> str:
        """UploadPart; its ETag. MultipartGone when S3 no longer knows the upload."""
        try:
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=size,
            )
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                raise MultipartGone(upload_id) from exc
            raise
        return str(response["ETag"])

    def upload_part_copy(self, key: str, upload_id: str, number: int, source_key: str) -> str:
        """A part copied inside S3 from a whole object of the same bucket. MultipartGone
        when S3 no longer knows the upload."""
        try:
            response = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source_key},
            )
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                raise MultipartGone(upload_id) from exc
            raise
        return str(response["CopyPartResult"]["ETag"])

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """CompleteMultipartUpload; the object's ETag (the proof it is the one we wrote)."""
        response = self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )
        return str(response.get("ETag", ""))

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        """Abort; False when S3 no longer knows the upload (already aborted or completed)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return False
            raise
        return True

    def put_object(
        self, key: str, body: BinaryIO | bytes, size: int, headers: Mapping[str, str] | None = None
    ) -> str:
        """PutObject; its ETag."""
        response = self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentLength=size, **(headers or {})
        )
        return str(response["ETag"])

    def head(self, key: str) -> tuple[int, str] | None:
        """The object's (size, ETag), or None when it does not exist."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(response["ContentLength"]), str(response["ETag"])

    def delete_object_if(self, key: str, etag: str) -> bool:
        """Delete the object only if it is still the one with ``etag`` (another upload
        may have written the same key since); True when deleted.

        The DELETE itself carries ``If-Match: etag`` (a conditional delete: AWS S3 and
        SeaweedFS answer 412 when the object changed), which closes the window between
        the HEAD and the DELETE. The HEAD stays for stores that ignore If-Match on a
        DELETE: there only that window is left. A store that refuses the header
        (NotImplemented) gets the plain DELETE after the HEAD check."""
        found = self.head(key)
        if not etag or found is None or found[1] != etag:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            code = error_code(exc)
            if code in ("PreconditionFailed", "412", *_ALREADY_GONE):
                return False  # replaced (or deleted) since the HEAD: not ours any more
            if code != "NotImplemented":
                raise
            self.delete_object(key)
        return True

    def list_multipart_uploads(self, prefix: str) -> Iterator[tuple[str, str, datetime]]:
        """Open multipart uploads under ``prefix``: (key, upload id, initiated)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload["Initiated"]

    def presigned_get(
        self, key: str, expires_in: int, response_headers: Mapping[str, str] | None = None
    ) -> str:
        """A GET URL valid ``expires_in`` seconds. ``response_headers`` (such as
        ResponseContentType, ResponseContentDisposition) are what S3 answers with, whatever
        the object says: the URL fixes how a browser treats the file."""
        params = {"Bucket": self.bucket, "Key": key, **(response_headers or {})}
        return str(
            self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        )

    def get_object(
        self, key: str, byte_range: str | None = None, if_match: str | None = None
    ) -> dict:
        """GetObject (optionally an HTTP Range, or only if the ETag is ``if_match``): the
        boto3 answer, Body streaming."""
        extra = {"Range": byte_range} if byte_range else {}
        if if_match:
            extra["IfMatch"] = if_match
        return dict(self.client.get_object(Bucket=self.bucket, Key=key, **extra))

    def list_objects(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Objects under ``prefix``: (key, last modified)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["LastModified"]

    def delete_objects(self, keys: list[str]) -> None:
        """Delete up to 1,000 objects in one request (missing ones count as deleted).

        Quiet mode answers only the keys S3 refused: NotDeleted names them (the others
        are deleted)."""
        if not keys:
            return
        response = self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = [
            (str(e.get("Key", "")), str(e.get("Code", "")), str(e.get("Message", "")))
            for e in response.get("Errors", [])
            if e.get("Code") not in _ALREADY_GONE
        ]
        if errors:
            raise NotDeleted(errors)

    def delete_object(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
