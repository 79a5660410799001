"""Settings that would put other people's data or this node's tails at risk are refused."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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


ROOT = Path(__file__).parents[2]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name: command.strip() for name, _, command in (x.partition(":") for x in lines)}


def test_the_worker_and_the_clock_connect_with_rindle_s_settings_not_a_url_flag():
    """Their Redis client comes from rindle's settings (TLS, Sentinel, the budget): the
    Procfile passes no --url the user would have to rewrite for TLS."""
    lines = procfile()
    for name in ("worker", "clock"):
        assert "--connection-class rindle.redis_client.RQConnection" in lines[name]
        assert "--url" not in lines[name] and "REDIS_URL" not in lines[name]
    assert lines["release"].endswith("rindle doctor --release")


def test_devstack_runs_the_procfile_s_worker_and_clock_commands():
    from devstack.services import clock_command, worker_command

    lines = procfile()
    assert " ".join(worker_command()[3:]) in lines["worker"].replace("${RINDLE_QUEUE:-", "")
    assert " ".join(clock_command()[3:]) == lines["clock"].removeprefix("rq ")


def test_app_json_runs_the_procfile_s_processes_with_settings_rindle_accepts():
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app["formation"]) == {"web", "worker", "clock"} <= set(procfile())
    assert any(a["plan"].startswith("heroku-redis:") for a in app["addons"])
    env = {k: v.get("value", "x") for k, v in app["env"].items()}
    env["RINDLE_PUBLIC"] = "1"
    settings = Settings.from_env(env)
    assert settings.redis_ssl_cert_reqs == "none"
    assert settings.tail_store == "s3"
    assert (ROOT / ".python-version").read_text().strip() == "3.11"


def test_every_setting_in_app_json_is_in_the_readme_s_settings_table():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("## Any node")]
    for name in json.loads((ROOT / "app.json").read_text())["env"]:
        assert f"`{name}`" in table, name
    for name in (
        "RINDLE_REDIS_SSL_CERT_REQS",
        "RINDLE_REDIS_SSL_CA_CERTS",
        "RINDLE_REDIS_SENTINELS",
    ):
        assert f"`{name}`" in table, name


@pytest.mark.parametrize("value, expected", [(None, 1), ("0", 0), ("2", 2)], ids=str)
def test_wait_replicas_is_one_by_default_or_a_count(value, expected):
    env = {} if value is None else {"RINDLE_REDIS_WAIT_REPLICAS": value}
    assert Settings.from_env(env).redis_wait_replicas == expected


@pytest.mark.parametrize("value", ["auto", "-1", "17"])
def test_a_wait_replicas_that_is_no_count_is_refused(value):
    with pytest.raises(ConfigError, match="RINDLE_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"RINDLE_REDIS_WAIT_REPLICAS": value})


def test_one_web_process_of_the_default_deployment_holds_1000_open_uploads(
    monkeypatch: pytest.MonkeyPatch,
):
    """Either gunicorn process may accept most of a node's connections: each has threads
    for 1,000 open PATCHes, and keep-alive slots beyond them (gunicorn keeps none when
    worker_connections is not above the threads)."""
    import runpy

    from rindle.config import DEFAULT_THREADS

    monkeypatch.delenv("RINDLE_THREADS", raising=False)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert DEFAULT_THREADS >= 1000
    assert conf["worker_connections"] > DEFAULT_THREADS
