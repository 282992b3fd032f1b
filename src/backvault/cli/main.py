"""The `backvault` command."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

_HELP = "backvault: centralized, deduplicated, encrypted backups."


def build_app(*, repo_only: bool = False) -> typer.Typer:
    """The command tree; repo_only leaves out the control-plane commands (and their imports)."""
    import typer  # imported here: an early unlock starts before it (see main)

    from backvault.cli import repo_maintenance  # noqa: F401  (registers forget/prune/key commands)
    from backvault.cli.repo_commands import app as repo_app

    app = typer.Typer(help=_HELP, no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def root() -> None:
        """backvault: centralized, deduplicated, encrypted backups."""

    app.add_typer(repo_app, name="repo")
    if repo_only:
        return app

    from backvault.cli.admin_commands import admin_app, keys_app, users_app
    from backvault.cli.audit_commands import register as register_audit_commands
    from backvault.cli.operator_commands import register as register_operator_commands
    from backvault.cli.server_commands import register as register_server_commands

    register_server_commands(app)  # server, worker, apply
    app.add_typer(admin_app, name="admin")
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    register_audit_commands(app)  # audit
    # configure, vaults, plans, selections, jobs, recovery-points, resources, endpoints, backup-now,
    # restore, status: clients of the API
    register_operator_commands(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    """`app`, the full command tree, is built on first use (tests import it)."""
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _unlock_repository_early(arguments: list[str]) -> None:
    """Derive a local repository's key while the command is still importing and parsing.

    Only a guess from argv and the environment (the passphrase never comes from argv):
    when it does not match what the command then opens, or fails, the command unlocks as
    usual and reports its own errors.
    """
    if not arguments or arguments[0] == "init" or "--help" in arguments:
        return
    repo = os.environ.get("BACKVAULT_REPOSITORY", "")
    password_file = None
    for index, argument in enumerate(arguments):
        value = arguments[index + 1] if index + 1 < len(arguments) else ""
        if argument in ("--repo", "-r"):
            repo = value
        elif argument.startswith("--repo="):
            repo = argument.partition("=")[2]
        elif argument == "--password-file":
            password_file = value
    if not repo or "://" in repo or not os.path.isdir(repo):
        return
    try:
        if password_file:
            with open(password_file, encoding="utf-8") as file:
                password = file.read().rstrip("\r\n")
        else:
            password = os.environ.get("BACKVAULT_PASSWORD", "")
    except OSError:
        return
    if not password:
        return
    from backvault.repo.repository import unlock_early
    from backvault.storage.local import LocalStore

    unlock_early(LocalStore(repo), password)


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:2] != ["repo"]:
        build_app()()
        return
    _unlock_repository_early(sys.argv[2:])
    # `backvault repo ...` (the backup data path) skips the control plane's imports: SQLAlchemy,
    # Alembic and boto3 cost about 0.5 s and 50 MiB of RSS in every repository command.
    _run_then_exit(build_app(repo_only=True))


def _run_then_exit(app: typer.Typer) -> None:
    """Run a repository command, then end the process without tearing the interpreter down.

    Freeing a big backup's or restore's objects one by one, and the modules, took 0.1-0.2 s
    after the work was done. Exit handlers still run and output is flushed first; while a
    thread other than this one is alive, when the exit status is a message, or under a
    profiler or tracer (which write their results at the end), the process exits the usual way.
    """
    try:
        app()
        status: object = 0
    except SystemExit as stop:
        status = 0 if stop.code is None else stop.code
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if not isinstance(status, int) or threading.active_count() > 1 or watched:
        raise SystemExit(status)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: let the interpreter report it as it would
        raise SystemExit(status) from None
    os._exit(status)


if __name__ == "__main__":
    main()
