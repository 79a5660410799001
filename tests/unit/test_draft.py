"""rindle.draft: the IETF resumable upload draft's fields and rules, as the draft words them."""

from __future__ import annotations

import pytest

from rindle import draft
from rindle.errors import TusError
from rindle.upload import State, Upload

MIB = 1024 * 1024
MAX = 1000 * MIB


def upload(offset: int = 0, length: int | None = None, state: State = State.RECEIVING) -> Upload:
    return Upload(
        id="u",
        state=state,
        length=length,
        offset=offset,
        committed=0,
        part_size=5 * MIB,
        key="uploads/u",
        metadata="",
        s3_upload_id="",
        node="",
        created_at=0.0,
        expires_at=3600.0,
    )


def transfer(complete: bool, length=None, body=0, offset=None) -> draft.Transfer:
    return draft.Transfer(complete, length, body, offset)


@pytest.mark.parametrize(
    "raw, parsed",
    [("?1", True), ("?0", False), (" ?1 ", True), ("?1;x=1", True), ("1", None), ("true", None)],
)
def test_upload_complete_is_a_structured_boolean(raw, parsed):
    assert draft.sf_boolean(raw) is parsed


@pytest.mark.parametrize(
    "raw, parsed",
    [("0", 0), ("25000000", 25000000), ("7;a", 7), ("-1", None), ("1.5", None), ("x", None)],
)
def test_offsets_and_lengths_are_non_negative_integers_else_ignored(raw, parsed):
    assert draft.sf_integer(raw) == parsed


def test_more_than_15_digits_is_not_an_integer():
    assert draft.sf_integer("1" * 16) is None


@pytest.mark.parametrize("raw, version", [("8", 8), ("6", 6), ("7", -1), ("x", -1)])
def test_interop_versions_served(raw, version):
    assert draft.interop_version({draft.VERSION_HEADER: raw}) == version
    assert draft.interop_version({}) is None


def test_an_append_needs_the_partial_upload_type_an_offset_and_upload_complete():
    headers = {"Upload-Complete": "?0", "Upload-Offset": "5", "Content-Type": "text/plain"}
    with pytest.raises(TusError) as err:
        draft.parse_transfer(headers, 3, append=True)
    assert err.value.status == 415
    headers["Content-Type"] = draft.PARTIAL_UPLOAD
    assert draft.parse_transfer(headers, 3, append=True) == transfer(False, None, 3, 5)
    for missing in ("Upload-Offset", "Upload-Complete"):
        with pytest.raises(TusError, match=missing):
            draft.parse_transfer({k: v for k, v in headers.items() if k != missing}, 3, True)


def test_a_chunked_body_has_no_known_length():
    parsed = draft.parse_transfer(
        {"Upload-Complete": "?1", "Transfer-Encoding": "chunked"}, None, append=False
    )
    assert parsed.body_length is None
    assert parsed.declared_length(0) is None


def test_creation_length_from_either_indicator_which_must_agree():
    assert draft.creation_length(transfer(True, None, 10), MAX) == 10
    assert draft.creation_length(transfer(False, 100, 10), MAX) == 100
    assert draft.creation_length(transfer(False, None, 10), MAX) is None
    with pytest.raises(TusError) as err:
        draft.creation_length(transfer(True, 100, 10), MAX)
    assert err.value.code == "inconsistent_length"
    with pytest.raises(TusError) as err:
        draft.creation_length(transfer(False, 5, 10), MAX)
    assert err.value.code == "inconsistent_length"
    with pytest.raises(TusError) as err:
        draft.creation_length(transfer(False, MAX + 1, 0), MAX)
    assert err.value.status == 413


def test_append_offset_must_match():
    with pytest.raises(TusError) as err:
        draft.check_append(upload(offset=10), transfer(False, body=5, offset=12), MAX)
    assert err.value.code == "offset_mismatch"
    assert err.value.headers["Upload-Offset"] == "10"


def test_a_completing_append_declares_the_length_of_an_upload_of_unknown_length():
    assert draft.check_append(upload(offset=10), transfer(True, body=5, offset=10), MAX) == 15
    assert draft.check_append(upload(offset=10), transfer(False, body=5, offset=10), MAX) is None
    known = upload(offset=10, length=15)
    assert draft.check_append(known, transfer(True, body=5, offset=10), MAX) is None


@pytest.mark.parametrize(
    "case",
    [
        transfer(True, body=4, offset=10),  # completes at 14, not 15
        transfer(False, length=16, body=1, offset=10),  # another length
        transfer(False, body=6, offset=10),  # beyond the length
    ],
)
def test_inconsistent_lengths(case):
    with pytest.raises(TusError) as err:
        draft.check_append(upload(offset=10, length=15), case, MAX)
    assert err.value.code == "inconsistent_length"
    assert err.value.status == 400


def test_appends_to_a_complete_upload():
    done = upload(offset=15, length=15, state=State.ASSEMBLING)
    assert draft.check_append(done, transfer(True, body=0, offset=15), MAX) is None  # replay
    with pytest.raises(TusError) as err:
        draft.check_append(done, transfer(False, body=0, offset=15), MAX)
    assert err.value.code == "completed_upload"
    with pytest.raises(TusError) as err:
        draft.check_append(done, transfer(True, body=1, offset=15), MAX)
    assert err.value.code == "inconsistent_length"


def test_an_upload_of_unknown_length_holds_10000_parts():
    with pytest.raises(TusError) as err:
        draft.check_append(upload(), transfer(False, body=50_000 * MIB + 1, offset=0), 10**15)
    assert err.value.status == 413


def test_limits_per_interop_version():
    assert draft.limits(8, MAX) == {"max-size": MAX}
    open_upload = upload()
    assert draft.limits(8, MAX, open_upload, now=600.0) == {"max-size": MAX, "max-age": 3000}
    assert draft.limits(6, MAX, open_upload, now=600.0) == {"max-size": MAX, "expires": 3000}
    assert draft.limits(8, 10**15, open_upload)["max-size"] == 5 * MIB * 10_000
    done = upload(offset=15, length=15, state=State.COMPLETED)
    assert draft.limits(8, MAX, done) == {"max-size": MAX}
    assert draft.format_limits({"max-size": 5, "max-age": 3}) == "max-size=5, max-age=3"


def test_shared_tails_announce_the_smallest_append():
    open_upload = upload()
    limits = draft.limits(8, MAX, open_upload, now=600.0, shared_tails=True)
    assert limits["min-append-size"] == 64 * 1024  # max(64 KiB, part size / 128)
    assert "min-append-size" not in draft.limits(8, MAX, open_upload, now=600.0)
    done = upload(offset=15, length=15, state=State.COMPLETED)
    assert "min-append-size" not in draft.limits(8, MAX, done, shared_tails=True)


def test_problem_documents_use_the_drafts_types():
    body = draft.problem(409, "offset_mismatch", "no", "12500000", 25000000)
    assert (
        body["type"] == "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
    )
    assert body["expected-offset"] == 12500000
    assert body["provided-offset"] == 25000000
    body = draft.problem(400, "inconsistent_length", "no")
    assert body["type"].endswith("#inconsistent-upload-length")
    body = draft.problem(404, "not_found", "no such upload")
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "detail": "no such upload",
        "error": "not_found",
    }
