"""`make demo`: the backvault service end to end, driven the way an operator drives it.

Every ``$ backvault ...`` line it prints is a command you can run yourself. The steps:

1. Sample data in .demo/sample: a directory tree (text, binary, nested directories) and a SQLite
   database. Every later run changes a little of both, so its backups are incremental.
2. ``backvault admin bootstrap`` makes the first API key. The demo keeps it in .demo/credentials.json
   (mode 0600) and never prints the secret; the key is also the dashboard login.
3. ``backvault server --data-dir .demo/server --listen 127.0.0.1:8787`` runs the scheduler, the workers
   and the HTTP API as a child process, logging to .demo/server.log. Everything lives in the data
   directory: the SQLite catalog, the master key and the "local" storage location.
4. ``backvault apply -f .demo/demo.yaml`` (made from examples/demo.yaml): a vault, a Filesystem endpoint,
   a SQLite endpoint and a daily plan whose tag selection picks both resources.
5. Discovery, then ``backvault backup-now`` for each resource.
6. ``backvault restore`` of each new recovery point into .demo/restores/run-N/, checked against the
   source: every file's bytes, every database row. PASS or FAIL per resource.
7. The recovery points, the API and dashboard URLs, and how to reach them.
8. The server stops at the end, unless --keep-running is given (``make demo-stop`` stops it later).

A second run reuses the data directory and its key, and adds a second recovery point per resource.

Usage: python examples/server_demo.py [--work-dir DIR] [--port PORT] [--keep-running] [--stop]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from server_demo_support import (
    DemoError,
    Paths,
    api_answers,
    compare_databases,
    compare_trees,
    database_rows,
    human_size,
    log_tail,
    next_run_number,
    port_in_use,
    prepare_sample,
    process_alive,
    recorded_server,
    shown,
    source_bytes,
    storage_bytes,
    tree_digests,
    write_private,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = ROOT / "examples" / "demo.yaml"
DEFAULT_PORT = 8787
PORT_VARIABLE = "BACKVAULT_DEMO_PORT"
VAULT = "demo"
DELETE_AFTER_DAYS = "35"  # as the daily rule of the plan in examples/demo.yaml
JOB_TIMEOUT_SECONDS = 300
SERVER_START_SECONDS = 60.0
SERVER_STOP_SECONDS = 60.0
# Settings of the caller's shell that would point the demo at another catalog, secret, server or key.
FOREIGN_VARIABLES = (
    "BACKVAULT_DATABASE_URL",
    "BACKVAULT_MASTER_SECRET",
    "BACKVAULT_DATA_DIR",
    "BACKVAULT_PROFILE",
    "BACKVAULT_ENDPOINT_URL",
    "BACKVAULT_REGION",
    "BACKVAULT_ACCESS_KEY_ID",
    "BACKVAULT_SECRET_ACCESS_KEY",
    "AWS_PROFILE",  # boto3 refuses a profile it cannot find, even when given a key pair
    "AWS_DEFAULT_PROFILE",
)


def heading(text: str) -> None:
    """Print a step's title."""
    print(f"\n== {text}", flush=True)


class Cli:
    """Runs ``backvault`` commands as child processes and echoes each command line."""

    def __init__(self, paths: Paths, environment: dict[str, str]) -> None:
        self.paths = paths
        self.environment = environment

    def echo(self, arguments: tuple[str, ...] | list[str]) -> None:
        """Print a command line as the reader would type it."""
        line = " ".join(arguments).replace(str(self.paths.work), shown(self.paths.work))
        print(f"$ backvault {line}", flush=True)

    def run(self, *arguments: str, echo_output: bool = True) -> str:
        """Run one command; return its standard output, raise DemoError when it fails."""
        self.echo(arguments)
        result = subprocess.run(
            [sys.executable, "-m", "backvault.cli.main", *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            # The CLI's own message: for a failed job it names the state and the job's StatusMessage.
            details = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-5:]
            raise DemoError(
                f"backvault {' '.join(arguments[:2])} exited with {result.returncode}:\n  "
                + "\n  ".join(details)
            )
        if echo_output:
            sys.stdout.write(result.stdout)
        return result.stdout

    def json(self, *arguments: str) -> Any:
        """Run a command with --json and return its parsed answer (not echoed)."""
        return json.loads(self.run(*arguments, "--json", echo_output=False))


# --- 2. the first API key ------------------------------------------------------------------------


def store_key(paths: Paths, key: dict[str, str]) -> dict[str, str]:
    """Keep a new key in credentials.json (0600); print only its id and where it is."""
    key = {"UserName": "admin", "AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
    write_private(paths.credentials, json.dumps(key, indent=2) + "\n")
    print(f"new admin key {key['AccessKeyId']}: stored in {shown(paths.credentials)} (mode 0600)")
    return key


def ensure_admin_key(cli: Cli, paths: Paths) -> dict[str, str]:
    """The admin's key: made by bootstrap on the first run, read from credentials.json later."""
    answer = cli.json("admin", "bootstrap", "--data-dir", str(paths.server_data))
    if answer.get("Created", True):  # a new key's answer holds the key itself
        return store_key(paths, answer)
    stored: dict[str, str] = {}
    if paths.credentials.exists():
        stored = json.loads(paths.credentials.read_text(encoding="utf-8"))
    listed = cli.json("keys", "list", "--user", "admin", "--data-dir", str(paths.server_data))
    active = {item["AccessKeyId"] for item in listed["AccessKeyMetadata"] if item["Status"] == "Active"}
    if stored.get("AccessKeyId") in active and stored.get("SecretAccessKey"):
        print(f"the admin exists already; its key {stored['AccessKeyId']} is in {shown(paths.credentials)}")
        return stored
    # The catalog has an admin, but the stored key is missing or not one of its keys: make a new one.
    return store_key(paths, cli.json("keys", "create", "admin", "--data-dir", str(paths.server_data)))


# --- 3. the server -------------------------------------------------------------------------------


def stop_recorded_server(paths: Paths) -> bool:
    """Stop the server an earlier run left running (SIGTERM, then wait); True if there was one."""
    pid = recorded_server(paths)
    if pid is not None:
        print(f"stopping the demo server an earlier run left running (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + SERVER_STOP_SECONDS
        while process_alive(pid):
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)  # a session of its own: the group holds its workers too
                break
            time.sleep(0.1)
    paths.pidfile.unlink(missing_ok=True)
    return pid is not None


def start_server(cli: Cli, paths: Paths, port: int, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``backvault server`` on 127.0.0.1:port and wait until its API answers."""
    arguments = ["server", "--data-dir", str(paths.server_data), "--listen", f"127.0.0.1:{port}"]
    cli.echo(arguments)
    with open(paths.server_log, "ab") as log:
        # A session of its own: Ctrl-C reaches only the demo, which then stops the server cleanly.
        server = subprocess.Popen(
            [sys.executable, "-m", "backvault.cli.main", *arguments],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    paths.pidfile.write_text(f"{server.pid} {port}\n")
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not api_answers(port):
        if server.poll() is not None:
            paths.pidfile.unlink(missing_ok=True)
            raise DemoError(
                f"the server exited with {server.returncode}; its log ends:\n  {log_tail(paths.server_log)}"
            )
        if time.monotonic() > deadline:
            stop_server(server, paths)
            raise DemoError(f"the server did not answer within {SERVER_START_SECONDS:.0f} s")
        time.sleep(0.2)
    print(f"server pid {server.pid} answers at http://127.0.0.1:{port} (log: {shown(paths.server_log)})")
    return server


def stop_server(server: subprocess.Popen[bytes], paths: Paths) -> None:
    """Stop the server cleanly: SIGTERM, wait for its workers to finish, then forget its pid."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    paths.pidfile.unlink(missing_ok=True)
    print(f"server stopped (exit code {server.returncode})")


# --- 5. and 6. backups and restores --------------------------------------------------------------


def discover(cli: Cli) -> dict[str, str]:
    """Discover every endpoint now; return the ARNs of the two sample resources by name."""
    answer = cli.json("endpoints", "discover")
    arns = [arn for endpoint in answer.get("Endpoints", []) for arn in endpoint.get("ResourceArns") or []]
    found = {}
    for name, suffix in (
        ("documents", ":filesystem:files/documents"),
        ("shop.db", ":sqlite:databases/shop.db"),
    ):
        matches = [arn for arn in arns if arn.endswith(suffix)]
        if not matches:
            raise DemoError(f"discovery did not find the sample resource {name} (found: {arns or 'nothing'})")
        found[name] = matches[0]
        print(f"  found {name}: {matches[0]}")
    return found


def back_up(cli: Cli, paths: Paths, arns: dict[str, str]) -> dict[str, str]:
    """Back up each resource now and wait for its job; return the new recovery point ARN by name."""
    before = storage_bytes(paths, VAULT)
    points = {}
    for name, arn in arns.items():
        wait = ("--wait", "--poll", "0.5", "--timeout", str(JOB_TIMEOUT_SECONDS))
        job = cli.json("backup-now", arn, "--vault", VAULT, "--delete-after-days", DELETE_AFTER_DAYS, *wait)
        points[name] = job["RecoveryPointArn"]
        size = human_size(int(job.get("BackupSizeInBytes") or 0))
        print(f"  {job['State']}: {name} ({size}) -> {job['RecoveryPointArn']}")
    grown = human_size(storage_bytes(paths, VAULT) - before)
    print(
        f"the vault's storage grew by {grown} for {human_size(source_bytes(paths))} of source data "
        "(chunks it already holds are not stored again)"
    )
    return points


def restore_and_verify(cli: Cli, paths: Paths, points: dict[str, str], run: int) -> bool:
    """Restore each new point into restores/run-N/ and compare it with the source; True if all match."""
    restored_documents = paths.restores / f"run-{run}" / "documents"
    restored_database = paths.restores / f"run-{run}" / "shop.db"
    wait = ("--vault", VAULT, "--wait", "--poll", "0.5", "--timeout", str(JOB_TIMEOUT_SECONDS))
    cli.json("restore", points["documents"], "--to", str(restored_documents), *wait)
    # A SQLite copy goes below the endpoint's root, where restores/ links to the demo's restores/.
    cli.json("restore", points["shop.db"], "--to", f"restores/run-{run}/shop.db", *wait)
    checks = {
        "documents": (compare_trees(paths.documents, restored_documents), restored_documents),
        "shop.db": (compare_databases(paths.database, restored_database), restored_database),
    }
    for name, (problems, where) in checks.items():
        if problems:
            print(f"FAIL {name}: {shown(where)} differs from the source: " + "; ".join(problems[:5]))
        elif name == "documents":
            files = sum(1 for value in tree_digests(where).values() if value != "dir")
            print(f"PASS {name}: {files} files in {shown(where)}, every byte equal to the source")
        else:
            rows = sum(len(table) for table in database_rows(where).values())
            print(f"PASS {name}: {shown(where)} is intact, all {rows} rows equal to the source")
    return not any(problems for problems, _ in checks.values())


# --- 7. what there is to see ---------------------------------------------------------------------


def print_recovery_points(cli: Cli, new_points: dict[str, str]) -> None:
    """A table of the demo vault's recovery points, oldest first; '*' marks this run's."""
    points = cli.json("recovery-points", "list", "--vault", VAULT)["RecoveryPoints"]
    points.sort(key=lambda point: (point.get("ResourceName") or "", point.get("CreationDate") or ""))
    header = ("Resource", "Created (UTC)", "Size", "Status", "  RecoveryPointArn")
    rows = [header] + [
        (
            point.get("ResourceName") or point.get("ResourceArn", "-"),
            str(point.get("CreationDate", "-"))[:19].replace("T", " "),
            human_size(int(point.get("BackupSizeInBytes") or 0)),
            point.get("Status", "-"),
            ("* " if point["RecoveryPointArn"] in new_points.values() else "  ") + point["RecoveryPointArn"],
        )
        for point in points
    ]
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_access(paths: Paths, port: int, key: dict[str, str]) -> None:
    """The URLs, where the key is and commands to try (never the secret itself)."""
    url = f"http://127.0.0.1:{port}"
    write_private(
        paths.credentials_env,
        "# backvault demo credentials (written by examples/server_demo.py); keep this file private.\n"
        f"export AWS_ACCESS_KEY_ID={key['AccessKeyId']}\n"
        f"export AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}\n"
        f"export BACKVAULT_ENDPOINT_URL={url}\n"
        f"export BACKVAULT_ACCESS_KEY_ID={key['AccessKeyId']}\n"
        f"export BACKVAULT_SECRET_ACCESS_KEY={key['SecretAccessKey']}\n",
    )
    executable = Path(sys.executable).with_name("backvault")
    backvault = shown(executable) if executable.exists() else "backvault"
    print(f"API:         {url}  (the AWS Backup API, SigV4, region 'local')")
    print(f"Dashboard:   {url}/backvault/dashboard/")
    print(f"Credentials: {shown(paths.credentials)} (mode 0600): the admin's access key {key['AccessKeyId']}")
    print("             and its secret, which is also the dashboard login (not printed here);")
    print(f"             {shown(paths.credentials_env)} holds them as shell variables")
    print("Try it while the server runs:")
    print(f"  . {shown(paths.credentials_env)}")
    print(f"  aws backup list-backup-vaults --endpoint-url {url} --region local")
    print(f"  {backvault} recovery-points list --vault {VAULT}")


# --- the whole run -------------------------------------------------------------------------------


def run_demo(paths: Paths, port: int, keep_running: bool) -> None:
    """Steps 1 to 8 of the module docstring."""
    paths.work.mkdir(parents=True, exist_ok=True)
    base_environment = {key: value for key, value in os.environ.items() if key not in FOREIGN_VARIABLES}
    cli = Cli(paths, {**base_environment, "XDG_CONFIG_HOME": str(paths.client_config)})
    # Before any work: the port must be free once an earlier demo server is gone.
    stop_recorded_server(paths)
    if port_in_use(port):
        raise DemoError(
            f"port {port} on 127.0.0.1 is in use by another program; choose a free one with --port N "
            f"or {PORT_VARIABLE}=N (make demo {PORT_VARIABLE}=N)"
        )
    paths.restores.mkdir(exist_ok=True)
    run = next_run_number(paths)
    (paths.restores / f"run-{run}").mkdir()

    heading(f"1. sample data (run {run} in {shown(paths.work)})")
    prepare_sample(paths, run)

    heading("2. the first API key")
    key = ensure_admin_key(cli, paths)

    heading("3. the server")
    server = start_server(cli, paths, port, base_environment)
    leave_running = False
    try:
        # The operator commands find the server and the key in these variables, never in argv.
        cli.environment.update(
            BACKVAULT_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            BACKVAULT_ACCESS_KEY_ID=key["AccessKeyId"],
            BACKVAULT_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
        heading("4. the configuration: a vault, two endpoints, a daily plan")
        template = string.Template(CONFIG_TEMPLATE.read_text(encoding="utf-8"))
        sample = json.dumps(str(paths.sample))[1:-1]  # escaped for the double-quoted YAML strings
        paths.config.write_text(template.substitute(SAMPLE_DIR=sample), encoding="utf-8")
        cli.run("apply", "-f", str(paths.config), "--data-dir", str(paths.server_data))

        heading("5. discover the resources and back them up now")
        points = back_up(cli, paths, discover(cli))

        heading(f"6. restore into {shown(paths.restores / f'run-{run}')} and verify")
        verified = restore_and_verify(cli, paths, points, run)

        heading(f"7. recovery points of vault {VAULT} (* made by this run)")
        print_recovery_points(cli, points)
        print()
        print_access(paths, port, key)
        if not verified:
            raise DemoError("a restored copy differs from its source (see FAIL above)")
        leave_running = keep_running
    finally:
        if not leave_running:
            heading("8. stop the server")
            stop_server(server, paths)
    if keep_running:
        print(f"\nThe server keeps running as pid {server.pid}; stop it with: make demo-stop")
    else:
        print("To keep the server running for the dashboard and the commands above:")
        print("  make demo DEMO_ARGS=--keep-running")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="The backvault service end to end (make demo).")
    parser.add_argument(
        "--work-dir", type=Path, default=ROOT / ".demo", help="where everything goes (default: .demo)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(PORT_VARIABLE) or DEFAULT_PORT),
        help=f"the API's port on 127.0.0.1 (default: ${PORT_VARIABLE}, else {DEFAULT_PORT})",
    )
    parser.add_argument("--keep-running", action="store_true", help="leave the server running at the end")
    parser.add_argument("--stop", action="store_true", help="only stop the server a --keep-running run left")
    options = parser.parse_args(argv)
    if not 0 < options.port < 65536:
        parser.error(f"--port {options.port} is not a TCP port")
    return options


def exit_on_sigterm(number: int, _frame: object) -> NoReturn:
    """Turn SIGTERM into SystemExit, so the server is stopped on the way out."""
    raise SystemExit(128 + number)


def main(argv: list[str] | None = None) -> int:
    """Run the demo (with --stop: stop a kept server); return the exit code."""
    options = parse_arguments(argv)
    paths = Paths(options.work_dir.expanduser().absolute())
    if options.stop:
        if not stop_recorded_server(paths):
            print("no demo server is running")
        return 0
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        run_demo(paths, options.port, options.keep_running)
    except DemoError as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    print("\ndemo complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
