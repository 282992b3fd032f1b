"""The `backvault` command."""

from __future__ import annotations

import sys

import typer

_HELP = "backvault: centralized, deduplicated, encrypted backups."


def build_app(*, repo_only: bool = False) -> typer.Typer:
    """The command tree; repo_only leaves out the control-plane commands (and their imports)."""
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


def main() -> None:
    """Console-script entry point."""
    # `backvault repo ...` (the backup data path) skips the control plane's imports: SQLAlchemy,
    # Alembic and boto3 cost about 0.5 s and 50 MiB of RSS in every repository command.
    build_app(repo_only=sys.argv[1:2] == ["repo"])()


if __name__ == "__main__":
    main()
