"""The tail directory (issue #21, item 2): every directory on its path is checked, it is
opened once, and tails are opened relative to it, so that another local user who can
reach a directory on the way cannot plant, swap or steal tails."""

from __future__ import annotations

import os

import pytest

from rindle.config import Settings
from rindle.core import Rindle
from rindle.errors import ConfigError
from rindle.storage import Tail, tail_path, try_remove_idle_tail
from rindle.storage.tail import check_tail_dir

OTHER_UID = 54321

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's directory")


def start(root) -> Rindle:
    return Rindle(Settings.from_env({"RINDLE_TMP_DIR": str(root)}))


def test_a_symlinked_tus_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "tus")
    with pytest.raises(ConfigError, match=r"RINDLE_TMP_DIR: .*/tus must be a directory"):
        start(tmp_path)


def test_a_symlinked_root_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "rindle")
    with pytest.raises(ConfigError, match=r"/rindle must be a directory, not a link"):
        start(tmp_path / "rindle")
    assert not (tmp_path / "elsewhere" / "tus").exists()


@as_root
def test_a_root_another_user_made_is_refused(tmp_path):
    """Another user pre-created the predictable /tmp/rindle-<uid>."""
    planted = tmp_path / "rindle-1000"
    planted.mkdir(mode=0o755)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"rindle-1000 belongs to uid {OTHER_UID}"):
        start(planted)
    assert not (planted / "tus").exists()


@as_root
def test_a_parent_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"theirs belongs to uid {OTHER_UID}"):
        start(theirs / "rindle")


def test_a_parent_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may rename our root away and put a link there
    with pytest.raises(ConfigError, match=r"shared is writable by other users \(mode 777\)"):
        start(shared / "rindle")


def test_a_sticky_parent_others_may_write_is_fine(tmp_path):
    """Like /tmp: others cannot rename or delete what is ours in it."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    start(sticky / "rindle")
    assert (sticky / "rindle" / "tus").stat().st_mode & 0o777 == 0o700


def test_a_root_others_may_write_is_refused_even_if_sticky(tmp_path):
    root = tmp_path / "rindle"
    root.mkdir()
    os.chmod(root, 0o1777)
    with pytest.raises(ConfigError, match="rindle is writable by other users"):
        start(root)


def test_a_tus_swapped_for_a_link_after_start_up_sends_nothing_there(tmp_path):
    root = str(tmp_path / "node")
    check_tail_dir(root)  # start-up
    tus = tmp_path / "node" / "tus"
    target = tmp_path / "target"
    target.mkdir()
    os.rename(tus, tmp_path / "node" / "moved")
    os.symlink(target, tus)
    name = os.path.basename(tail_path("u", root))

    tail = Tail.open("u", 0, root)
    tail.write(b"bytes of u")
    tail.sync()
    tail.close()
    assert os.listdir(target) == [], "a tail landed in the link's target"
    assert (tmp_path / "node" / "moved" / name).read_bytes() == b"bytes of u"

    # Removal too goes to the directory opened at start-up, not through the link.
    (target / name).write_bytes(b"someone else's")
    assert try_remove_idle_tail(tail_path("u", root))
    assert (target / name).read_bytes() == b"someone else's"
    assert not (tmp_path / "node" / "moved" / name).exists()


def test_a_tail_dir_removed_after_start_up_is_not_made_again(tmp_path):
    root = str(tmp_path / "node")
    check_tail_dir(root)
    os.rmdir(tmp_path / "node" / "tus")
    with pytest.raises(OSError, match="removed after start-up"):
        Tail.open("u", 0, root)
    assert not (tmp_path / "node" / "tus").exists()
