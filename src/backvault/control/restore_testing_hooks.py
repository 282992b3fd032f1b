"""User validation hooks of restore tests: a command run without a shell, or a webhook POSTed JSON.

Both get the same facts about the restored copy: a command as ``BACKVAULT_*`` environment variables
(``BACKVAULT_RESTORE_JOB_ID``, ``BACKVAULT_CREATED_RESOURCE_NAME``, ``BACKVAULT_RESTORED_PATH`` for a
directory...), a webhook as a JSON object with AWS-style keys. The command runs with a small, clean
environment (never the server's, which holds the master secret and database URL), no stdin, in its
own process group, and is killed with that group when its timeout passes.

Verdicts: a command that exits 0 passes and any other status fails; a webhook that answers 2xx with
``{"ValidationStatus": "SUCCESSFUL"|"FAILED", "ValidationStatusMessage": "..."}`` gives that verdict,
and a 2xx answer without one defers it: the hook is expected to call PutRestoreValidationResult
within the selection's ValidationWindowHours. Either hook may also call PutRestoreValidationResult
while it runs; the runner then keeps the worse of the two verdicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backvault.control.context import ServiceContext
from backvault.control.restore_testing_documents import webhook_context
from backvault.control.secrets import SecretError

SUCCESSFUL = "SUCCESSFUL"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
# How often a running command lets the runner renew its claim on the test.
KEEP_ALIVE_SECONDS = 30.0
_OUTPUT_TAIL = 400
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class HookVerdict:
    """What a hook said: SUCCESSFUL, FAILED or TIMED_OUT, or None when it will report later."""

    status: str | None
    message: str


def run_validation_hook(
    context: ServiceContext,
    hook: Mapping[str, Any],
    plan_name: str,
    facts: Mapping[str, str],
    keep_alive: Callable[[], None],
) -> HookVerdict:
    """Run a stored hook (see module docstring) and return its verdict."""
    timeout = float(hook.get("TimeoutSeconds") or 60)
    if "Command" in hook:
        return run_command(list(hook["Command"]), facts, timeout, keep_alive)
    try:
        url = context.master_secret.unwrap(str(hook["WebhookUrl"]), webhook_context(plan_name)).decode(
            "utf-8"
        )
    except (SecretError, KeyError) as error:
        return HookVerdict(
            FAILED, f"The validation webhook's URL cannot be opened ({error}); set the hook again."
        )
    return call_webhook(url, str(hook.get("WebhookOrigin") or "the webhook"), facts, timeout)


def run_command(
    argv: list[str], facts: Mapping[str, str], timeout: float, keep_alive: Callable[[], None]
) -> HookVerdict:
    """Run a command hook without a shell; exit status 0 is SUCCESSFUL."""
    environment = {
        "PATH": os.environ.get("PATH") or _SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": tempfile.gettempdir(),
    }
    for key, value in facts.items():
        environment[f"BACKVAULT_{_snake(key)}"] = value
    program = os.path.basename(argv[0])
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(  # argv from the operator's hook, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # its own process group, so a timeout kills its children too
            )
        except OSError as error:
            return HookVerdict(FAILED, f"The validation hook {program!r} cannot start: {error.strerror}.")
        remaining = timeout
        while True:
            try:
                status = process.wait(timeout=min(KEEP_ALIVE_SECONDS, max(remaining, 0.01)))
                break
            except subprocess.TimeoutExpired:
                remaining -= KEEP_ALIVE_SECONDS
                if remaining <= 0:
                    _kill_group(process)
                    return HookVerdict(
                        TIMED_OUT, f"The validation hook {program!r} did not finish within {timeout:g} s."
                    )
                try:
                    keep_alive()
                except BaseException:
                    _kill_group(process)
                    raise
        output.seek(0)
        tail = _tail(output.read())
    if status == 0:
        return HookVerdict(SUCCESSFUL, f"The validation hook {program!r} succeeded{_shown(tail)}")
    cause = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    return HookVerdict(FAILED, f"The validation hook {program!r} {cause}{_shown(tail)}")


def call_webhook(url: str, origin: str, facts: Mapping[str, str], timeout: float) -> HookVerdict:
    """POST the facts as JSON; a 2xx answer may carry the verdict or defer it."""
    request = urllib.request.Request(
        url,
        data=json.dumps(dict(facts)).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "backvault-restore-testing"},
    )
    # No proxies from the environment: the hook is the operator's own endpoint.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as answer:
            body = answer.read(64 * 1024)
    except urllib.error.HTTPError as error:
        return HookVerdict(FAILED, f"The validation webhook at {origin} answered HTTP {error.code}.")
    except TimeoutError:
        return HookVerdict(
            TIMED_OUT, f"The validation webhook at {origin} did not answer within {timeout:g} s."
        )
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            return HookVerdict(
                TIMED_OUT, f"The validation webhook at {origin} did not answer within {timeout:g} s."
            )
        return HookVerdict(FAILED, f"The validation webhook at {origin} cannot be reached: {reason}.")
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError:
        document = {}
    status = document.get("ValidationStatus") if isinstance(document, dict) else None
    message = document.get("ValidationStatusMessage") if isinstance(document, dict) else None
    shown = f": {str(message)[:_OUTPUT_TAIL]}" if message else "."
    if status in (SUCCESSFUL, FAILED):
        return HookVerdict(status, f"The validation webhook at {origin} reported {status}{shown}")
    return HookVerdict(
        None, f"The validation webhook at {origin} accepted the test and will report its result."
    )


def worse(first: str | None, second: str | None) -> str | None:
    """The worse of two verdicts (FAILED over TIMED_OUT over SUCCESSFUL; None means no verdict)."""
    order = {FAILED: 3, TIMED_OUT: 2, SUCCESSFUL: 1}
    candidates = [status for status in (first, second) if status in order]
    return max(candidates, key=lambda status: order[status]) if candidates else None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-_OUTPUT_TAIL:]


def _shown(tail: str) -> str:
    return f": {tail}" if tail else "."


def _snake(key: str) -> str:
    """RestoreJobId -> RESTORE_JOB_ID."""
    out = []
    for index, char in enumerate(key):
        if char.isupper() and index and not key[index - 1].isupper():
            out.append("_")
        out.append(char.upper())
    return "".join(out)
