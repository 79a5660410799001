"""How rindle's S3 client signs part bodies: every byte hashed for the signature over
plain HTTP to another host, none over HTTPS (TLS protects them) nor on loopback (no network
to guard; hashing cost a third of the server's CPU)."""

from __future__ import annotations

import pytest

from rindle.config import Settings
from rindle.core import Rindle
from rindle.storage.tail import FileSlice


class Sent(Exception):
    """Raised instead of sending: the test only looks at the signed request."""


@pytest.mark.parametrize(
    ("endpoint", "signed"),
    [
        ("http://10.1.2.3:9000", True),
        ("http://minio.internal:9000", True),
        ("http://127.0.0.1:9", False),
        ("http://localhost:9", False),
        ("http://[::1]:9", False),
        ("https://s3.example.com", False),
        ("", False),
    ],
    ids=["http-ip", "http-name", "loopback", "localhost", "loopback-v6", "https", "aws"],
)
def test_part_bodies_are_hashed_for_the_signature_only_over_plain_http_between_hosts(
    endpoint: str, signed: bool, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    settings = Settings.from_env(
        {"RINDLE_TMP_DIR": str(tmp_path), **({"AWS_ENDPOINT_URL_S3": endpoint} if endpoint else {})}
    )
    s3 = Rindle(settings).s3
    seen: dict[str, str] = {}

    def capture(request, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(request.headers)
        raise Sent

    s3.client.meta.events.register("before-send.s3.UploadPart", capture)
    body = tmp_path / "part"
    body.write_bytes(b"x" * 1000)
    with open(body, "rb") as f, pytest.raises(Sent):
        s3.upload_part("uploads/a", "U", 1, FileSlice(f.fileno(), 0, 1000), 1000)
    content_sha = seen["X-Amz-Content-SHA256"]
    if isinstance(content_sha, bytes):
        content_sha = content_sha.decode()
    assert (content_sha != "UNSIGNED-PAYLOAD") is signed, content_sha
