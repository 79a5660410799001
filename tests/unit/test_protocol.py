import base64

import pytest

from rindle import protocol
from rindle.config import MIB
from rindle.errors import TusError


@pytest.mark.parametrize("raw, value", [("0", 0), ("17", 17), ("000123", 123)])
def test_integer_headers_accept_digits(raw, value):
    assert protocol.parse_non_negative(raw, "Upload-Offset") == value


@pytest.mark.parametrize("raw", [None, "", "-1", "+1", " 1", "1.0", "0x10", "1e3", "9" * 20])
def test_integer_headers_refuse_anything_else(raw):
    with pytest.raises(TusError) as exc:
        protocol.parse_non_negative(raw, "Upload-Offset")
    assert exc.value.status == 400


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


def test_metadata_round_trip_with_empty_and_binary_values():
    name, blob = b64("résumé 1.pdf".encode()), b64(bytes(range(256)))
    header = f"filename {name},is_confidential,blob {blob}"
    parsed = protocol.parse_metadata(header)
    assert parsed == {
        "filename": "résumé 1.pdf".encode(),
        "is_confidential": None,
        "blob": bytes(range(256)),
    }
    assert protocol.parse_metadata(protocol.format_metadata(parsed)) == parsed


@pytest.mark.parametrize(
    "header, parsed",
    [
        ("filename", {"filename": None}),  # fine: a key alone
        ("a " + b64(b"x") + ", b " + b64(b"y"), {"a": b"x", "b": b"y"}),  # spaces after commas
    ],
)
def test_metadata_lenient_forms(header, parsed):
    assert protocol.parse_metadata(header) == parsed


@pytest.mark.parametrize(
    "header",
    [
        "filename not*base64",
        "filename YQ",  # unpadded
        "a YQ==,a YQ==",  # duplicate key
        ",",  # empty key
        "a b c",  # three fields
        "a YQ==,",  # a trailing empty pair
    ],
)
def test_metadata_malformed_is_400(header):
    with pytest.raises(TusError) as exc:
        protocol.parse_metadata(header)
    assert exc.value.status == 400
    assert exc.value.code == "invalid_metadata"


def test_part_size_is_configured_size_for_ordinary_lengths():
    assert protocol.part_size_for(64 * MIB, 8 * MIB) == 8 * MIB


def test_part_size_never_below_s3_floor():
    assert protocol.part_size_for(1, 1) == 5 * MIB


def test_part_size_grows_to_keep_10000_parts():
    length = 200 * 1024 * MIB  # 200 GiB at 8 MiB would need 25,600 parts
    size = protocol.part_size_for(length, 8 * MIB)
    assert size >= -(-length // 10_000)
    assert -(-length // size) <= 10_000


@pytest.mark.parametrize(
    "header, algorithm, digest",
    [
        ("sha1 " + b64(bytes(20)), "sha1", bytes(20)),
        ("SHA256 " + b64(b"\x01" * 32), "sha256", b"\x01" * 32),
        ("crc32 " + b64(b"\x00\x00\x00\x2a"), "crc32", b"\x00\x00\x00\x2a"),
    ],
)
def test_checksum_header_gives_algorithm_and_digest(header, algorithm, digest):
    assert protocol.parse_checksum(header) == protocol.Checksum(algorithm, digest)


@pytest.mark.parametrize("header", ["md5 " + b64(bytes(15)), "sha512 " + b64(bytes(32))])
def test_a_digest_of_the_wrong_length_is_400_before_any_body(header):
    with pytest.raises(TusError) as exc:
        protocol.parse_checksum(header)
    assert (exc.value.status, exc.value.code) == (400, "invalid_checksum")


def test_concat_header_gives_kind_and_urls():
    assert protocol.parse_concat(None) == ("", [])
    assert protocol.parse_concat("partial") == ("partial", [])
    assert protocol.parse_concat("final;/files/a https://x/files/b") == (
        "final",
        ["/files/a", "https://x/files/b"],
    )


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", "gzip, chunked"])
def test_chunked_is_matched_in_any_case(value):
    headers = {"Transfer-Encoding": value, "Content-Type": protocol.PATCH_CONTENT_TYPE}
    assert protocol.is_chunked(headers)
    assert protocol.has_upload_body(headers, None)


@pytest.mark.parametrize(
    "content_type, inline",
    [
        ("image/png", True),
        ("IMAGE/JPEG", True),
        ("application/pdf", True),
        ("text/plain; charset=utf-8", True),
        ("video/mp4", True),
        ("audio/mpeg", True),
        ("image/svg+xml", False),
        ("text/html", False),
        ("application/xhtml+xml", False),
        ("application/javascript", False),
        ("application/octet-stream", False),
        ("", False),
    ],
)
def test_only_types_that_run_no_script_are_shown_inline(content_type, inline):
    assert protocol.shown_inline(content_type) is inline


def test_download_headers_keep_the_file_name_and_force_attachment():
    metadata = {"filename": "été.html".encode(), "filetype": b"text/html"}
    assert protocol.download_headers(metadata) == {
        "ContentType": "text/html",
        "ContentDisposition": 'attachment; filename="_t_.html"; '
        "filename*=UTF-8''%C3%A9t%C3%A9.html",
    }
    assert protocol.download_headers({"filename": b"a.png"}, "image/png") == {
        "ContentType": "image/png",
        "ContentDisposition": "inline; filename=\"a.png\"; filename*=UTF-8''a.png",
    }
    assert protocol.download_headers({}) == {
        "ContentType": "application/octet-stream",
        "ContentDisposition": "attachment",
    }
