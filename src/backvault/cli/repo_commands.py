"""`backvault repo ...`: direct work on one repository (restic-like)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from backvault.cli.common import (
    EXIT_ERROR,
    EXIT_PARTIAL,
    clear_errors,
    err_console,
    fail,
    human_bytes,
    open_store,
    out_console,
    print_json,
    progress_enabled,
    read_password,
)
from backvault.cli.progress import TaskProgress
from backvault.repo.repository import Repository

app = typer.Typer(help="Work directly on a repository: init, backup, restore, check, forget, prune, keys.")

RepoOption = Annotated[
    str, typer.Option("--repo", "-r", envvar="BACKVAULT_REPOSITORY", help="Path or s3://bucket/prefix")
]
EndpointOption = Annotated[
    str | None, typer.Option("--endpoint", envvar="BACKVAULT_S3_ENDPOINT", help="S3 endpoint URL")
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option("--password-file", help="File holding the passphrase (else $BACKVAULT_PASSWORD)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output")]


@contextmanager
def opened(repo: str, endpoint: str | None, password_file: Path | None, *, shared_lock: bool = True):  # type: ignore[no-untyped-def]
    """Open the repository for one command, turning known failures into clear errors."""
    with clear_errors():
        store = open_store(repo, endpoint)
        password = read_password(password_file)
        # the index is loaded once, after the lock (lock_and_refresh), not twice
        repository = Repository.open(store, password, load_index=not shared_lock)
        # readers lock too: prune must not sweep what we are reading (exclusive commands lock themselves)
        lock = repository.lock_and_refresh() if shared_lock else None
        try:
            for key, reason in repository.problems.damaged.items():
                err_console.print(
                    f"[yellow]warning:[/] {key} is damaged ({reason}); run 'backvault repo check'"
                )
            yield repository
        finally:
            if lock is not None:
                lock.release()


@app.command()
def init(
    repo: RepoOption = "", endpoint: EndpointOption = None, password_file: PasswordFileOption = None
) -> None:
    """Create a new, empty repository."""
    with clear_errors():
        store = open_store(repo, endpoint)
        password = read_password(password_file)
        repository = Repository.init(store, password)
    out_console.print(f"created repository {repository.config.id[:10]} at {store.location}")


@app.command()
def backup(
    paths: Annotated[list[Path], typer.Argument(help="Files and directories to back up")],
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag for the snapshot (repeatable)")] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Exclude pattern (repeatable)")
    ] = None,
    one_file_system: Annotated[
        bool, typer.Option("--one-file-system", "-x", help="Stay on one filesystem")
    ] = False,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Parent snapshot for change detection")
    ] = None,
    with_atime: Annotated[
        bool,
        typer.Option("--with-atime", help="Record access times (by default a node's atime is its mtime)"),
    ] = False,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Walking processes for a local repository (default: one per core)",
        ),
    ] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Back up files and directories into a new snapshot."""
    from backvault.sources.filesystem.backup import backup_paths

    absolute = [str(path.absolute()) for path in paths]
    with opened(repo, endpoint, password_file) as repository:
        for path in absolute:
            if not Path(path).exists() and not Path(path).is_symlink():
                fail(f"{path} does not exist; nothing was backed up")
        parent_snapshot = repository.find_snapshot(parent) if parent else _find_parent(repository, absolute)
        with TaskProgress(progress_enabled(quiet or json_output), "backup") as progress:
            snapshot = backup_paths(
                repository,
                absolute,
                tags=tag or [],
                excludes=exclude or [],
                one_file_system=one_file_system,
                parent=parent_snapshot,
                progress=progress.update,
                with_atime=with_atime,
                processes=processes,
            )
    if json_output:
        print_json(snapshot.to_json())
    else:
        summary = snapshot.summary
        out_console.print(
            f"snapshot {snapshot.short_id} saved: {summary.get('files_new', 0)} new, "
            f"{summary.get('files_changed', 0)} changed, "
            f"{summary.get('files_unmodified', 0)} unmodified files; "
            f"{human_bytes(summary.get('bytes_read', 0))} read, "
            f"{human_bytes(summary.get('bytes_stored', 0))} added to the repository",
            highlight=False,
        )
    if snapshot.partial:
        for item in snapshot.errors:
            err_console.print(
                f"[yellow]skipped:[/] {escape(item['path'])}: {escape(item['error'])}", highlight=False
            )
        err_console.print(
            f"[yellow]warning:[/] snapshot {snapshot.short_id} is PARTIAL: "
            f"{len(snapshot.errors)} item(s) could not be read"
        )
        raise typer.Exit(EXIT_PARTIAL)


def _find_parent(repository: Repository, paths: list[str]):  # type: ignore[no-untyped-def]
    """The newest snapshot of the same paths from this host, for the files cache."""
    import socket

    candidates = [
        snapshot
        for snapshot in repository.list_snapshots()
        if sorted(snapshot.paths) == sorted(paths) and snapshot.hostname == socket.gethostname()
    ]
    return candidates[-1] if candidates else None


@app.command()
def snapshots(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only snapshots with this tag")] = None,
    json_output: JsonOption = False,
) -> None:
    """List snapshots, oldest first."""
    with opened(repo, endpoint, password_file) as repository:
        found = [s for s in repository.list_snapshots() if not tag or set(tag) & set(s.tags)]
    if json_output:
        print_json([snapshot.to_json() for snapshot in found])
        return
    table = Table("ID", "Time", "Host", "Tags", "Paths", "Status")
    for snapshot in found:
        table.add_row(
            snapshot.short_id,
            snapshot.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            snapshot.hostname,
            ",".join(snapshot.tags),
            "\n".join(snapshot.paths),
            "partial" if snapshot.partial else "complete",
        )
    out_console.print(table)
    out_console.print(f"{len(found)} snapshot(s)")


@app.command("ls")
def list_files(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id prefix or 'latest'")],
    path: Annotated[str, typer.Argument(help="Directory inside the snapshot")] = "/",
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the files of a snapshot."""
    from backvault.sources.filesystem.listing import walk_snapshot

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        found = repository.find_snapshot(snapshot)
        entries = list(walk_snapshot(repository, found, path))
    if json_output:
        print_json(
            [
                {
                    "path": item_path,
                    "type": node.type,
                    "size": node.size,
                    "mode": node.mode,
                    "mtime_ns": node.mtime_ns,
                }
                for item_path, node in entries
            ]
        )
        return
    for item_path, _node in entries:
        out_console.print(item_path, highlight=False, markup=False)


@app.command()
def restore(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id prefix or 'latest'")],
    target: Annotated[Path, typer.Option("--target", "-t", help="Directory to restore into")],
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Restore only this path (repeatable)")
    ] = None,
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Restore a snapshot (or parts of it) into a directory."""
    from backvault.sources.filesystem.restore import restore_snapshot

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        found = repository.find_snapshot(snapshot)
        with TaskProgress(progress_enabled(quiet or json_output), "restore") as progress:
            result = restore_snapshot(
                repository, found, str(target), includes=include or [], progress=progress.update
            )
    if json_output:
        print_json(
            {
                "snapshot": found.id,
                "files_restored": result.files_restored,
                "bytes_written": result.bytes_written,
                "errors": [{"path": path, "error": message} for path, message in result.errors],
            }
        )
    else:
        out_console.print(
            f"restored {result.files_restored} files ({human_bytes(result.bytes_written)}) "
            f"from snapshot {found.short_id} to {target}",
            highlight=False,
        )
    if result.errors:
        for path, message in result.errors:
            err_console.print(f"[red]not restored:[/] {escape(path)}: {escape(message)}", highlight=False)
        raise typer.Exit(EXIT_ERROR)


@app.command("check")
def check_command(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and verify every pack")] = False,
    read_data_subset: Annotated[
        str | None, typer.Option("--read-data-subset", help="Verify a random N% of packs, e.g. 10%")
    ] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Verify the repository's structure, and optionally its data."""
    from backvault.repo.check import check

    fraction = 1.0 if read_data else _parse_percent(read_data_subset) if read_data_subset else 0.0
    with (
        opened(repo, endpoint, password_file) as repository,
        clear_errors(),
        TaskProgress(progress_enabled(quiet or json_output), "check") as progress,
    ):
        report = check(repository, read_data_fraction=fraction, progress=progress.update)
    if json_output:
        print_json(
            {
                "ok": report.ok,
                "snapshots_checked": report.snapshots_checked,
                "trees_checked": report.trees_checked,
                "packs_read": report.packs_read,
                "notes": report.notes,
                "problems": [
                    {
                        "object": p.object_key,
                        "message": p.message,
                        "affected": [{"snapshot": a.snapshot, "path": a.path} for a in p.affected],
                    }
                    for p in report.problems
                ],
            }
        )
    else:
        for note in report.notes:
            out_console.print(f"note: {note}", highlight=False)
        for problem in report.problems:
            err_console.print(
                f"[red]damaged:[/] {problem.object_key}: {escape(problem.message)}", highlight=False
            )
            for affected in problem.affected:
                err_console.print(
                    f"    affects snapshot {affected.snapshot[:8]}: {affected.path}",
                    highlight=False,
                    markup=False,
                )
        verdict = "no errors were found" if report.ok else f"{len(report.problems)} problem(s) found"
        out_console.print(
            f"checked {report.snapshots_checked} snapshots, {report.trees_checked} trees, "
            f"{report.packs_read} packs read: {verdict}",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)


def _parse_percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        fail(f"--read-data-subset takes a percentage like 10%, not '{text}'")
    if not 0 < value <= 100:
        fail(f"--read-data-subset must be between 0% and 100%, not '{text}'")
    return value / 100


@app.command()
def stats(
    repo: RepoOption = "",
    endpoint: EndpointOption = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show sizes, deduplication and compression."""
    from backvault.repo.maintenance import repository_stats

    with opened(repo, endpoint, password_file) as repository, clear_errors():
        result = repository_stats(repository)
    document = {
        "snapshots": result.snapshots,
        "packs": result.packs,
        "blobs": result.blobs,
        "restore_size": result.restore_size,
        "unique_size": result.unique_size,
        "stored_size": result.stored_size,
        "dedup_ratio": round(result.dedup_ratio, 3),
        "compression_ratio": round(result.compression_ratio, 3),
    }
    if json_output:
        print_json(document)
        return
    for key, value in document.items():
        shown = human_bytes(value) if key.endswith("_size") else value
        out_console.print(f"{key.replace('_', ' '):>18}: {shown}", highlight=False)
