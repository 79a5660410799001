"""Settings that would put other people's data or this node's tails at risk are refused."""

from __future__ import annotations

import os
import tempfile

import pytest

from rindle import Settings
from rindle.core import Rindle
from rindle.errors import ConfigError
from rindle.storage import Tail, tail_path, try_remove_idle_tail


@pytest.mark.parametrize("prefix", ["", "/", "uploads", "a/b"])
def test_a_prefix_that_is_not_a_folder_of_its_own_is_refused(prefix):
    """The orphan sweep aborts every unreferenced multipart upload under the prefix."""
    with pytest.raises(ConfigError, match="RINDLE_S3_PREFIX"):
        Settings.from_env({"RINDLE_S3_PREFIX": prefix})


def test_a_folder_prefix_is_taken():
    assert Settings.from_env({"RINDLE_S3_PREFIX": "media/tus/"}).s3_prefix == "media/tus/"


def test_the_default_tail_dir_is_private_to_this_user_not_the_shared_tmp():
    tmp_dir = Settings.from_env({}).tmp_dir
    assert tmp_dir != tempfile.gettempdir()
    assert os.path.dirname(tmp_dir) == tempfile.gettempdir()
    assert str(os.geteuid()) in os.path.basename(tmp_dir)


def test_a_tail_dir_others_can_write_is_refused_at_start_up(tmp_path):
    (tmp_path / "tus").mkdir(mode=0o700)
    os.chmod(tmp_path / "tus", 0o777)
    with pytest.raises(ConfigError, match="writable by other users"):
        Rindle(Settings.from_env({"RINDLE_TMP_DIR": str(tmp_path)}))


def test_a_tail_dir_that_is_a_symlink_is_refused_at_start_up(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "tus")
    with pytest.raises(ConfigError, match="directory"):
        Rindle(Settings.from_env({"RINDLE_TMP_DIR": str(tmp_path)}))


def test_the_tail_dir_is_created_private(tmp_path):
    Rindle(Settings.from_env({"RINDLE_TMP_DIR": str(tmp_path)}))
    assert (tmp_path / "tus").stat().st_mode & 0o777 == 0o700


def test_a_tail_is_never_opened_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tail_path("u", str(tmp_path))
    os.makedirs(os.path.dirname(path), mode=0o700)
    os.symlink(victim, path)
    with pytest.raises(OSError):
        Tail.open("u", 0, str(tmp_path))
    with pytest.raises(OSError):
        try_remove_idle_tail(path)
    assert victim.read_bytes() == b"precious"


def test_a_final_upload_concatenates_at_most_100_partials_by_default():
    assert Settings.from_env({}).max_partials == 100
    assert Settings.from_env({"RINDLE_TUS_MAX_PARTIALS": "7"}).max_partials == 7


def test_the_procfile_and_the_app_agree_on_the_thread_count():
    """The app sizes its S3 pool from RINDLE_THREADS: its default must be the one the
    Procfile gives gunicorn, or a default deployment's pool would not fit its threads."""
    from pathlib import Path

    from rindle.config import DEFAULT_THREADS

    web = next(
        line
        for line in (Path(__file__).parents[2] / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    assert f"--threads ${{RINDLE_THREADS:-{DEFAULT_THREADS}}}" in web
