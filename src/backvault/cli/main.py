"""The `backvault` command."""

from __future__ import annotations

import typer

from backvault.cli import repo_maintenance  # noqa: F401  (registers forget/prune/key commands)
from backvault.cli.admin_commands import admin_app, keys_app, users_app
from backvault.cli.audit_commands import register as register_audit_commands
from backvault.cli.operator_commands import register as register_operator_commands
from backvault.cli.repo_commands import app as repo_app
from backvault.cli.server_commands import register as register_server_commands

app = typer.Typer(
    help="backvault: centralized, deduplicated, encrypted backups.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(repo_app, name="repo")
register_server_commands(app)  # server, worker, apply
app.add_typer(admin_app, name="admin")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
register_audit_commands(app)  # audit
# configure, vaults, plans, selections, jobs, recovery-points, resources, endpoints, backup-now,
# restore, status: clients of the API
register_operator_commands(app)


@app.callback()
def root() -> None:
    """backvault: centralized, deduplicated, encrypted backups."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
