import base64
import os

import pytest

from rindle.errors import TailMissing
from rindle.storage import Tail, TailLocked, tail_path


@pytest.mark.parametrize("upload_id", ["abc", "a/b", "a+b=c", "with space", "../../etc/passwd"])
def test_tail_path_never_puts_the_raw_id_on_disk(tmp_path, upload_id):
    path = tail_path(upload_id, root=str(tmp_path))
    name = os.path.basename(path)
    assert os.path.dirname(path) == os.path.join(str(tmp_path), "tus")
    assert name.endswith(".tail")
    encoded = name[: -len(".tail")]
    assert "=" not in encoded and "/" not in encoded and " " not in encoded and "+" not in encoded
    padded = encoded + "=" * (-len(encoded) % 4)
    assert base64.urlsafe_b64decode(padded).decode() == upload_id


def test_tail_path_defaults_to_configured_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RINDLE_TMP_DIR", str(tmp_path))
    assert tail_path("x").startswith(str(tmp_path / "tus"))


def test_tail_is_the_file_tail_path_names(tmp_path):
    tail = Tail.open("u/1+=", 0, root=str(tmp_path))
    tail.write(b"hello")
    tail.close()
    with open(tail_path("u/1+=", root=str(tmp_path)), "rb") as f:
        assert f.read() == b"hello"


def test_missing_tail_with_buffered_bytes_is_refused(tmp_path):
    with pytest.raises(TailMissing):
        Tail.open("u", 10, root=str(tmp_path))
    assert not os.path.exists(tail_path("u", root=str(tmp_path)))


def test_short_tail_is_refused_and_left_alone(tmp_path):
    t = Tail.open("u", 0, root=str(tmp_path))
    t.write(b"abc")
    t.close()
    with pytest.raises(TailMissing):
        Tail.open("u", 5, root=str(tmp_path))
    assert os.path.getsize(tail_path("u", root=str(tmp_path))) == 3


def test_long_tail_is_cut_to_the_committed_length(tmp_path):
    t = Tail.open("u", 0, root=str(tmp_path))
    t.write(b"abcdef")
    t.close()
    t = Tail.open("u", 4, root=str(tmp_path))
    assert t.size == 4
    t.write(b"XY")
    t.close()
    with open(tail_path("u", root=str(tmp_path)), "rb") as f:
        assert f.read() == b"abcdXY"


def test_second_writer_on_this_node_is_locked_out(tmp_path):
    first = Tail.open("u", 0, root=str(tmp_path))
    with pytest.raises(TailLocked):
        Tail.open("u", 0, root=str(tmp_path))
    first.close()
    Tail.open("u", 0, root=str(tmp_path)).close()


def test_two_reapers_at_once_leave_a_new_writers_tail_alone(tmp_path, monkeypatch):
    """Reaper B opened an idle tail; before B locks it, reaper A deletes it and a writer
    makes a new tail at the same path. B's lock is on the old file: B must neither fail
    nor delete the writer's file."""
    import fcntl

    from rindle.storage import tail as tail_module
    from rindle.storage import try_remove_idle_tail

    old = Tail.open("u1", 0, str(tmp_path))
    old.write(b"old")
    old.close()
    path = tail_path("u1", str(tmp_path))
    real_flock = fcntl.flock
    newer: list[Tail] = []
    raced = []

    def meanwhile(fd, how):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)
            os.unlink(path)  # reaper A
            newer.append(Tail.open("u1", 0, str(tmp_path)))  # a writer's new tail
            newer[0].write(b"new bytes")
        return real_flock(fd, how)

    monkeypatch.setattr(tail_module.fcntl, "flock", meanwhile)
    assert try_remove_idle_tail(path) is False
    monkeypatch.setattr(tail_module.fcntl, "flock", real_flock)
    newer[0].close()
    with open(path, "rb") as f:
        assert f.read() == b"new bytes"
