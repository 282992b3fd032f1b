"""Authentication (SigV4 access keys) and authorization (IAM-style policies) of API requests.

The app calls, for every request::

    principal = authenticate_request(context, method=..., path=RAW_PATH, query_string=..., headers=...,
                                     body=..., region=...)
    throttle.check(principal.access_key_id)
    authorize(context, principal, "backup:" + operation_name, resource_arns)

Authorization follows IAM inside one account: for each resource, the caller's policies and the access
policy of the vault the resource belongs to (a vault ARN, or a recovery point's ARN through its
vault) are evaluated together; an explicit Deny in either wins, then an Allow in either (a vault
policy naming the user grants as AWS does), else access is denied. Nothing here logs or returns a
secret: failures are logged with the access key id and the error code only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from backvault.api.sigv4 import verify_request
from backvault.control.catalog.activity import RecoveryPoint
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.identity import Principal, record_access_key_use, signing_secret
from backvault.domain.arn import BackupArnKind, parse_backup_arn
from backvault.domain.errors import AccessDeniedException, BackupServiceError
from backvault.domain.iam import (
    Decision,
    RequestContext,
    combine_decisions,
    evaluate_policies,
    validate_policy_document,
)

__all__ = ["Principal", "authenticate_request", "authorize", "require_action", "vault_policies_for"]

logger = logging.getLogger(__name__)
ANY_RESOURCE = "*"
# Last-use stamps are written at most this often per key from one process (seconds).
_USE_RECORD_INTERVAL = 60.0
_recorded_uses: dict[str, float] = {}
# A vault policy that does not validate denies everything on the vault (it must never grant, and
# its Deny statements cannot be told apart), except what repairs it: otherwise nobody could.
_POLICY_REPAIR_ACTIONS = frozenset(
    f"backup:{name}".lower()
    for name in ("PutBackupVaultAccessPolicy", "DeleteBackupVaultAccessPolicy", "GetBackupVaultAccessPolicy")
)
_recorded_uses_lock = threading.Lock()


def authenticate_request(
    context: ServiceContext,
    *,
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
) -> Principal:
    """Verify the request's AWS Signature V4 and return who signed it.

    ``path`` is the raw request path, still percent-encoded as sent (ASGI ``raw_path``): SigV4 signs
    the encoded form. Raises MissingAuthenticationTokenException, IncompleteSignature,
    UnrecognizedClientException, InvalidSignatureException or RequestExpired.
    """
    found: list[Principal] = []

    def lookup(access_key_id: str) -> str:
        principal, secret = signing_secret(context, access_key_id)
        found.append(principal)
        return secret

    try:
        signed = verify_request(
            method=method,
            raw_path=path,
            query_string=query_string,
            headers=headers,
            body=body,
            region=region,
            now=context.now(),
            lookup_secret=lookup,
        )
    except BackupServiceError as error:
        key = found[0].access_key_id if found else "-"
        logger.info("authentication refused (access key %s): %s", key, error.code)
        raise
    principal = found[0]
    _note_use(context, signed.access_key_id, region)
    return principal


def _note_use(context: ServiceContext, access_key_id: str, region: str) -> None:
    now = time.monotonic()
    with _recorded_uses_lock:
        last = _recorded_uses.get(access_key_id)
        if last is not None and now - last < _USE_RECORD_INTERVAL:
            return
        _recorded_uses[access_key_id] = now
    try:
        record_access_key_use(context, access_key_id, region)
    except BackupServiceError as error:
        # Bookkeeping only: a busy catalog must not fail an authenticated request.
        logger.warning("could not record the use of access key %s: %s", access_key_id, error.code)


def authorize(
    context: ServiceContext, principal: Principal, action: str, resource_arns: Sequence[str]
) -> None:
    """Allow the action on every resource or raise AccessDeniedException naming the first refused one."""
    resources = list(dict.fromkeys(resource_arns)) or [ANY_RESOURCE]
    vault_policies = vault_policies_for(context, resources)
    for resource in resources:
        request = RequestContext(
            action=action,
            resource=resource,
            principal_arn=principal.user_arn,
            user_name=principal.user_name,
            region=context.default_location,
        )
        identity = evaluate_policies(principal.policies, request)
        vault = vault_policies.get(resource)
        decisions = [identity]
        broken = None
        if vault is not None:
            broken = _malformed_vault_policy(vault)
            if broken is None:
                decisions.append(evaluate_policies([vault], request, resource_policy=True))
            elif action.lower() not in _POLICY_REPAIR_ACTIONS:
                decisions.append(Decision.DENY)
        decision = combine_decisions(decisions)
        if decision is Decision.ALLOW:
            continue
        if identity is Decision.DENY:
            reason = "with an explicit deny in an identity-based policy"
        elif broken is not None and decision is Decision.DENY:
            reason = (
                f"because the backup vault's access policy is malformed ({broken}); replace it with "
                "PutBackupVaultAccessPolicy or remove it with DeleteBackupVaultAccessPolicy"
            )
        elif decision is Decision.DENY:
            reason = "with an explicit deny in the backup vault's access policy"
        else:
            reason = f"because no identity-based policy allows the {action} action"
        logger.info("access denied: %s %s on %s (%s)", principal.user_arn, action, resource, reason)
        raise AccessDeniedException(
            f"User: {principal.user_arn} is not authorized to perform: {action} on resource: {resource} "
            f"{reason}"
        )


def _malformed_vault_policy(document: Mapping[str, Any]) -> str | None:
    try:
        validate_policy_document(document, resource_policy=True)
    except BackupServiceError as error:
        return error.message
    return None


def vault_policies_for(context: ServiceContext, resource_arns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Map each resource ARN that lies in a vault with an access policy to that policy."""
    vault_of: dict[str, str] = {}
    point_arns: list[str] = []
    for arn in resource_arns:
        if arn == ANY_RESOURCE:
            continue
        try:
            parsed = parse_backup_arn(arn)
        except BackupServiceError:
            continue  # not one of our objects (a protected resource, an IAM role): no vault policy
        if parsed.kind is BackupArnKind.BACKUP_VAULT:
            vault_of[arn] = parsed.identifier
        elif parsed.kind is BackupArnKind.RECOVERY_POINT:
            point_arns.append(arn)
    if not vault_of and not point_arns:
        return {}
    with context.catalog.transaction() as session:
        if point_arns:
            rows = session.execute(
                select(RecoveryPoint.arn, RecoveryPoint.vault_name).where(RecoveryPoint.arn.in_(point_arns))
            )
            for point_arn, vault_name in rows:
                vault_of[point_arn] = vault_name
        names = sorted(set(vault_of.values()))
        policies: dict[str, dict[str, Any]] = {}
        policy_rows = session.execute(
            select(BackupVault.name, BackupVault.access_policy).where(BackupVault.name.in_(names))
        )
        for name, policy in policy_rows:
            if policy is not None:
                policies[name] = policy
    return {arn: policies[name] for arn, name in vault_of.items() if name in policies}


# --- a FastAPI dependency for the /backvault/... extension routes --------------------------------


def require_action(
    action: str, resources: Callable[[Request], Sequence[str]] | None = None
) -> Callable[[Request], Awaitable[Principal]]:
    """Return a dependency that authenticates, throttles and authorizes ``action``, yielding the caller.

    It reads ``context``, ``region`` and ``throttle`` from ``request.app.state`` (set by create_app);
    ``resources`` maps the request to the ARNs acted on (default: any resource, "*"). Use it as
    ``principal: Annotated[Principal, Depends(require_action("backvault:ListUsers"))]``.
    """

    async def dependency(request: Request) -> Principal:
        state = request.app.state
        body = await request.body()  # Starlette caches it: the route can still read the body
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
        arns = list(resources(request)) if resources is not None else [ANY_RESOURCE]
        return await run_in_threadpool(
            _authenticate_throttle_authorize,
            state.context,
            state.throttle,
            action,
            arns,
            method=request.method,
            path=raw_path.decode("latin-1"),
            query_string=request.scope.get("query_string", b"").decode("latin-1"),
            headers=request.headers,
            body=body,
            region=state.region,
        )

    return dependency


def _authenticate_throttle_authorize(
    context: ServiceContext,
    throttle: Any,
    action: str,
    resource_arns: Sequence[str],
    **request: Any,
) -> Principal:
    principal = authenticate_request(context, **request)
    throttle.check(principal.access_key_id)
    authorize(context, principal, action, resource_arns)
    return principal
