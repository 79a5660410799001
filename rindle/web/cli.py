"""``flask rindle ...``: maintenance by hand, printing what it did."""

from __future__ import annotations

import json
import time

import click
from flask.cli import AppGroup
from werkzeug.http import http_date

from rindle import doctor as checkup
from rindle import redis_client
from rindle.web.context import current_rindle

cli = AppGroup(
    "rindle", help="Check and maintain rindle (doctor, tails, expired uploads, orphans)."
)

dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Only count what would be done; change nothing."
)


def report(what: str, counts: dict[str, int], dry_run: bool) -> None:
    prefix = "[dry run] " if dry_run else ""
    click.echo(f"{prefix}{what}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


@cli.command("sweep")
@dry_run_option
def sweep(dry_run: bool) -> None:
    """Expire uploads past Upload-Expires and abort their multipart uploads."""
    report("sweep", current_rindle().maintenance.sweep_expired(dry_run=dry_run), dry_run)


@cli.command("reap-tails")
@dry_run_option
@click.option("--root", default=None, help="Tmp dir to reap (default: RINDLE_TMP_DIR).")
def reap_tails(dry_run: bool, root: str | None) -> None:
    """Delete this node's tails of ended, unknown or expired uploads."""
    report(
        "reap-tails", current_rindle().maintenance.reap_tails(root=root, dry_run=dry_run), dry_run
    )


@cli.command("abort-orphans")
@dry_run_option
@click.option("--grace", type=int, default=None, help="Seconds (default: RINDLE_ORPHAN_GRACE).")
def abort_orphans(dry_run: bool, grace: int | None) -> None:
    """Abort multipart uploads under the prefix that no open upload references, and
    delete shared tails that no upload needs any more."""
    maintenance = current_rindle().maintenance
    grace = maintenance.settings.orphan_grace if grace is None else grace
    report("abort-orphans", maintenance.sweep_orphans(grace, dry_run=dry_run), dry_run)


@cli.command("status")
@click.argument("upload_id")
def status(upload_id: str) -> None:
    """Show one upload's bookkeeping as JSON."""
    rindle = current_rindle()
    upload = rindle.uploads.get(upload_id)
    if upload is None:
        raise click.ClickException(f"no upload {upload_id}")
    info = {
        **upload.__dict__,
        "buffered": upload.buffered,
        "parts": len(rindle.uploads.parts(upload_id)),
        "expires": http_date(upload.expires_at),
    }
    click.echo(json.dumps(info, indent=2))


@cli.command("list")
@click.option("--state", default=None, help="Only uploads in this state.")
def list_uploads(state: str | None) -> None:
    """One line per upload: id, state, offset/length, age."""
    rindle = current_rindle()
    now = time.time()
    shown = 0
    for upload_id in rindle.uploads.ids():
        upload = rindle.uploads.get(upload_id)
        if upload is None or (state and upload.state != state):
            continue
        age = int(now - upload.created_at)
        click.echo(f"{upload.id}  {upload.state:<10} {upload.offset}/{upload.length}  {age}s")
        shown += 1
    click.echo(f"{shown} upload(s)")


MARKS = {checkup.OK: "ok  ", checkup.WARN: "WARN", checkup.FAIL: "FAIL"}


@cli.command("doctor")
@click.option(
    "--release",
    is_flag=True,
    help="Quick checks for a release phase: Redis, the bucket writable, the sizes.",
)
def doctor(release: bool) -> None:
    """Check Redis, S3, the tmp dir, the size limits and the workers; exit 1 on a failure."""
    redis_client.set_role("tool")  # its connections are not a web process's
    results = checkup.run(current_rindle(), release=release)
    for check in results:
        click.echo(f"{MARKS[check.status]}  {check.name}: {check.detail}")
        if check.fix and check.status != checkup.OK:
            click.echo(f"      fix: {check.fix}")
    failed = [c.name for c in results if c.status == checkup.FAIL]
    warned = [c.name for c in results if c.status == checkup.WARN]
    if failed:
        click.echo(f"doctor: {len(failed)} failed ({', '.join(failed)})")
        raise SystemExit(1)
    click.echo("doctor: all good" + (f" ({len(warned)} warning(s))" if warned else ""))
