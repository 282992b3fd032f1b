"""`backvault repo forget|prune|key|unlock|repair-index`: keeping a repository tidy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from backvault.cli.common import clear_errors, fail, human_bytes, out_console, print_json, read_password
from backvault.cli.repo_commands import (
    EndpointOption,
    JsonOption,
    PasswordFileOption,
    RepoOption,
    app,
    opened,
)
from backvault.domain.retention import Duration, KeepPolicy, SnapshotRef, apply_policy, parse_duration

NEW_PASSWORD_ENV = "BACKVAULT_NEW_PASSWORD"
NewPasswordFileOption = Annotated[
    Path | None,
    typer.Option("--new-password-file", help=f"File with the new passphrase (else ${NEW_PASSWORD_ENV})"),
]


def _duration(text: str | None, option: str) -> Duration | None:
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as error:
        fail(f"{option}: {error}")


@app.command()
def forget(
    snapshot_ids: Annotated[list[str] | None, typer.Argument(help="Snapshots to forget explicitly")] = None,
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the N newest snapshots")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", help="Keep the newest of N hours")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily", help="Keep the newest of N days")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="Keep the newest of N ISO weeks")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="Keep the newest of N months")] = 0,
    keep_yearly: Annotated[int, typer.Option("--keep-yearly", help="Keep the newest of N years")] = 0,
    keep_within: Annotated[
        str | None, typer.Option("--keep-within", help="Keep all within e.g. 1y2m3d4h")
    ] = None,
    keep_tag: Annotated[
        list[str] | None, typer.Option("--keep-tag", help="Keep snapshots with this tag")
    ] = None,
    group_by: Annotated[str, typer.Option("--group-by", help="Comma list of host,paths,tags")] = "host,paths",
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only show what would be removed")] = False,
    prune_after: Annotated[bool, typer.Option("--prune", help="Run prune afterwards")] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove snapshots by id or by a retention policy (restic's semantics, see docs/retention.md)."""
    from backvault.repo.maintenance import forget_snapshots

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        snapshots = repository.list_snapshots()
        if snapshot_ids:
            doomed = [repository.find_snapshot(ref) for ref in snapshot_ids]
            decisions_json = [{"id": s.id, "keep": False, "reasons": ["named explicitly"]} for s in doomed]
        else:
            policy = KeepPolicy(
                last=keep_last,
                hourly=keep_hourly,
                daily=keep_daily,
                weekly=keep_weekly,
                monthly=keep_monthly,
                yearly=keep_yearly,
                within=_duration(keep_within, "--keep-within"),
                tags=frozenset(keep_tag or []),
            )
            if policy.is_empty():
                fail(
                    "no policy given: pass snapshot ids or at least one --keep-* option; nothing was removed"
                )
            by_id = {s.id: s for s in snapshots}
            refs = [
                SnapshotRef(s.id, s.time, s.hostname, tuple(sorted(s.paths)), frozenset(s.tags))
                for s in snapshots
            ]
            decisions = apply_policy(
                refs, policy, [part.strip() for part in group_by.split(",") if part.strip()]
            )
            doomed = [by_id[d.snapshot.id] for d in decisions if not d.keep]
            decisions_json = [
                {"id": d.snapshot.id, "keep": d.keep, "reasons": list(d.reasons)} for d in decisions
            ]
        if not dry_run:
            forget_snapshots(repository, doomed)
        if json_output:
            print_json({"dry_run": dry_run, "decisions": decisions_json})
        else:
            table = Table("ID", "Time", "Decision", "Reasons")
            times = {s.id: s.time for s in snapshots}
            for item in decisions_json:
                moment = times.get(str(item["id"]))
                table.add_row(
                    str(item["id"])[:8],
                    moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "",
                    "keep" if item["keep"] else ("would remove" if dry_run else "removed"),
                    ", ".join(item["reasons"]),
                )
            out_console.print(table)
        if prune_after and not dry_run:
            _run_prune(repository, grace="1h", json_output=json_output)


@app.command("prune")
def prune_command(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    grace: Annotated[
        str, typer.Option("--grace", help="Delete marked packs after this long (0h = now)")
    ] = "1h",
    json_output: JsonOption = False,
) -> None:
    """Remove data no snapshot references (two-phase: mark, then delete after the grace period)."""
    with opened(repo, endpoint, password_file) as repository, clear_errors():
        _run_prune(repository, grace=grace, json_output=json_output)


def _run_prune(repository, *, grace: str, json_output: bool) -> None:  # type: ignore[no-untyped-def]
    from backvault.repo.prune import prune

    duration = _duration(grace, "--grace") or Duration()
    seconds = (
        duration.days * 86400 + duration.hours * 3600 + (duration.months * 30 + duration.years * 365) * 86400
    )
    report = prune(repository, grace_seconds=seconds)
    if json_output:
        print_json(vars(report))
        return
    out_console.print(
        f"prune: {report.packs_marked} pack(s) marked, {report.packs_repacked} repacked, "
        f"{report.packs_deleted} deleted ({human_bytes(report.bytes_freed)} freed), "
        f"{report.packs_resurrected} kept because a new snapshot uses them, {report.marks_deferred} deferred",
        highlight=False,
    )
    for message in report.messages:
        out_console.print(f"  {message}", highlight=False)


key_app = typer.Typer(help="Manage the passphrases that open the repository.")
app.add_typer(key_app, name="key")


@key_app.command("list")
def key_list(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """List key objects."""
    from backvault.repo.maintenance import list_keys

    with opened(repo, endpoint, password_file) as repository:
        found = list_keys(repository)
        current = repository.key_id
    if json_output:
        print_json([{**vars(key), "current": key.id == current} for key in found])
        return
    table = Table(" ", "ID", "Created", "Host", "User")
    for key in found:
        table.add_row(
            "*" if key.id == current else "", key.id[:10], key.created[:19], key.hostname, key.username
        )
    out_console.print(table)


@key_app.command("add")
def key_add(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    new_password_file: NewPasswordFileOption = None,
) -> None:
    """Add a key with another passphrase."""
    from backvault.repo.maintenance import add_key

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        new_password = read_password(new_password_file, env=NEW_PASSWORD_ENV, purpose="new passphrase")
        out_console.print(f"added key {add_key(repository, new_password)[:10]}")


@key_app.command("remove")
def key_remove(
    key_id: Annotated[str, typer.Argument(help="Key id prefix")],
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Remove a key (not the one in use)."""
    from backvault.repo.maintenance import remove_key

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        out_console.print(f"removed key {remove_key(repository, key_id)[:10]}")


@key_app.command("passwd")
def key_passwd(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    new_password_file: NewPasswordFileOption = None,
) -> None:
    """Change the passphrase of the key in use."""
    from backvault.repo.maintenance import change_password

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        new_password = read_password(new_password_file, env=NEW_PASSWORD_ENV, purpose="new passphrase")
        out_console.print(f"passphrase changed; new key {change_password(repository, new_password)[:10]}")


@app.command()
def unlock(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    remove_all: Annotated[
        bool, typer.Option("--remove-all", help="Also remove locks that look alive")
    ] = False,
) -> None:
    """Remove stale locks left by crashed processes."""
    from backvault.repo.locks import remove_stale_locks

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        count = remove_stale_locks(repository.store, repository.sealer, all_locks=remove_all)
    out_console.print(f"removed {count} lock(s)")


@app.command("repair-index")
def repair_index(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Rebuild the index from the packs' own headers."""
    from backvault.repo.maintenance import rebuild_index

    with opened(repo, endpoint, password_file, shared_lock=False) as repository, clear_errors():
        count, damaged = rebuild_index(repository)
    out_console.print(f"index rebuilt from {count} pack(s)")
    for item in damaged:
        out_console.print(f"[red]damaged pack skipped:[/] {item}", highlight=False)
    if damaged:
        raise typer.Exit(1)
