"""``backvault audit``: print what is unprotected or non-compliant, and why.

Without ``--framework`` every control is evaluated with AWS's default parameters over the whole
catalog; with it, the framework's controls (parameters and scopes) are evaluated now and the result
is stored like a scheduled evaluation. The exit status is 0 when everything evaluated is compliant,
1 when there are findings and 2 when the audit could not run (like grep: scripts can tell a
finding from a failure).

It opens the catalog of ``--data-dir`` (or ``--database-url`` / $BACKVAULT_DATABASE_URL) directly,
on the server's machine, like ``backvault admin``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from backvault.cli.common import DEFAULT_DATA_DIR, DatabaseUrl, DataDir, fail, out_console, print_json

if TYPE_CHECKING:
    from backvault.control.context import ServiceContext

EXIT_FINDINGS = 1
EXIT_FAILED = 2
FrameworkOption = Annotated[
    str | None,
    typer.Option(
        "--framework",
        help="Evaluate this audit framework's controls (default: every control with AWS's defaults).",
        show_default=False,
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to the ``backvault`` app."""
    app.command("audit")(audit)


def audit(
    framework: FrameworkOption = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database_url: DatabaseUrl = None,
) -> None:
    """Print unprotected and non-compliant resources with the reason; exit 1 when there are any."""
    from backvault.domain.errors import BackupServiceError

    with _service(data_dir, database_url) as context:
        try:
            evaluations = _evaluate(context, framework)
        except BackupServiceError as error:
            fail(error.message, EXIT_FAILED)
    failing = [item for item in evaluations if item["ComplianceStatus"] != "COMPLIANT"]
    failing.sort(key=lambda item: (item["ControlName"], item["ResourceArn"]))
    if as_json:
        print_json(
            {
                "Framework": framework,
                "Compliant": not failing,
                "EvaluatedCount": len(evaluations),
                "NonCompliantCount": len(failing),
                "Findings": [_json_row(item) for item in failing],
            }
        )
    else:
        _print_findings(framework, evaluations, failing)
    if failing:
        raise typer.Exit(EXIT_FINDINGS)


def _evaluate(context: ServiceContext, framework: str | None) -> list[dict[str, Any]]:
    """Return every evaluation as a report row (ControlName, ResourceArn, ComplianceStatus, Reason...)."""
    if framework is None:
        from backvault.control.audit import evaluate_controls, evaluation_to_aws

        return [evaluation_to_aws(item) for item in evaluate_controls(context)]
    from backvault.control.frameworks import (
        describe_framework,
        describe_framework_compliance,
        evaluate_frameworks,
    )

    describe_framework(context, framework)  # an unknown name fails here, clearly
    evaluate_frameworks(context, framework_names=[framework], force=True)
    compliance = describe_framework_compliance(context, framework)
    return [item for control in compliance["Controls"] for item in control["Evaluations"]]


def _print_findings(
    framework: str | None, evaluations: list[dict[str, Any]], failing: list[dict[str, Any]]
) -> None:
    what = f"framework {framework}" if framework else "every control with AWS's default parameters"
    if not failing:
        out_console.print(
            f"[bold green]compliant:[/] {len(evaluations)} evaluation(s) of {what}, no findings.",
            highlight=False,
        )
        return
    by_resource: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in failing:
        by_resource.setdefault((item["ResourceArn"], item["ResourceType"]), []).append(item)
    table = Table(
        title=f"{len(failing)} finding(s) on {len(by_resource)} resource(s), {len(evaluations)} "
        f"evaluation(s) of {what}",
        show_lines=True,
    )
    table.add_column("Resource", overflow="fold", ratio=2)
    table.add_column("Type")
    table.add_column("Finding: control, and why", overflow="fold", ratio=3)
    for (arn, resource_type), items in sorted(by_resource.items()):
        # Resource names come from the systems being audited: Text, so rich never reads them as markup.
        findings = Text()
        for index, item in enumerate(items):
            if index:
                findings.append("\n")
            findings.append(item["ControlName"], style="bold")
            findings.append(f"\n  {item['Reason']}")
            since = item.get("StatusSince")
            if since is not None:
                findings.append(f" (since {since:%Y-%m-%d %H:%M} UTC)", style="dim")
        table.add_row(Text(arn), Text(resource_type), findings)
    out_console.print(table)


def _json_row(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in item.items()}


@contextmanager
def _service(data_dir: Path, database_url: str | None) -> Iterator[ServiceContext]:
    """Open the catalog of an existing data directory (or database URL) without creating one."""
    from backvault.control.catalog import CatalogUnavailableError, open_catalog
    from backvault.control.catalog.database import CATALOG_FILE_NAME, DATABASE_URL_VARIABLE
    from backvault.control.context import ServiceContext
    from backvault.control.secrets import (
        MASTER_KEY_FILE_NAME,
        MASTER_SECRET_VARIABLE,
        MasterSecret,
        SecretError,
        load_master_secret,
    )

    data_dir = data_dir.expanduser()
    uses_sqlite = not (database_url or os.environ.get(DATABASE_URL_VARIABLE))
    if uses_sqlite and not (data_dir / CATALOG_FILE_NAME).is_file():
        # An empty new catalog would report "compliant" for a mistyped directory.
        fail(
            f"no catalog in {data_dir}: pass the server's --data-dir, or --database-url for PostgreSQL.",
            EXIT_FAILED,
        )
    try:
        if os.environ.get(MASTER_SECRET_VARIABLE) or (data_dir / MASTER_KEY_FILE_NAME).is_file():
            master_secret = load_master_secret(data_dir)
        else:
            # The audit unwraps no secret, so it must not create a key file as a side effect.
            master_secret = MasterSecret(os.urandom(32))
        catalog = open_catalog(database_url, data_dir)
    except (SecretError, CatalogUnavailableError, ValueError, OSError) as error:
        fail(str(error), EXIT_FAILED)
    try:
        yield ServiceContext(catalog=catalog, master_secret=master_secret)
    finally:
        catalog.dispose()
