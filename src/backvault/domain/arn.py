"""Amazon Resource Names for backvault's own objects and for the resources it protects.

Syntax is AWS's: ``arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE``. The partition defaults to ``aws``
so stock SDK validators accept our ARNs, the region is the storage location's name (default
``local``) and the account a configurable 12-digit id (default ``000000000000``).

backvault's objects live in the ``backup`` service, exactly like AWS Backup's::

    arn:aws:backup:local:000000000000:backup-vault:NAME
    arn:aws:backup:local:000000000000:backup-plan:ID
    arn:aws:backup:local:000000000000:recovery-point:ID
    arn:aws:backup:local:000000000000:legal-hold:ID
    arn:aws:backup:local:000000000000:framework:NAME-ID
    arn:aws:backup:local:000000000000:report-plan:NAME
    arn:aws:backup:local:000000000000:restore-testing-plan:NAME-ID

Protected resources. S3 buckets and DynamoDB tables get their real AWS shapes, so selections written
for AWS (``arn:aws:s3:::*``, ``arn:aws:dynamodb:*:*:table/*``) work unchanged::

    arn:aws:s3:::BUCKET                                   resource type "S3"
    arn:aws:dynamodb:REGION:ACCOUNT:table/NAME            resource type "DynamoDB"

Everything else is in the ``backvault`` service; ENDPOINT is the registered endpoint's name and the
part after the first ``/`` names the resource behind it::

    arn:aws:backvault:REGION:ACCOUNT:filesystem:ENDPOINT[/SUB/DIR]   "Filesystem" (no path = root)
    arn:aws:backvault:REGION:ACCOUNT:postgresql:ENDPOINT/DBNAME      "PostgreSQL"
    arn:aws:backvault:REGION:ACCOUNT:mysql:ENDPOINT/DBNAME           "MySQL"
    arn:aws:backvault:REGION:ACCOUNT:sqlite:ENDPOINT/REL/PATH.db     "SQLite"
    arn:aws:backvault:REGION:ACCOUNT:redis:ENDPOINT[/DBINDEX]        "Redis" (no index = instance)

The name part is percent-encoded (``quote`` leaving ``-._~@+=,`` as is, and ``/`` too in the paths
of Filesystem and SQLite), so spaces, ``:`` and ``*`` in directory or database names never clash with
ARN syntax or selection wildcards; ``str()`` of a parsed ARN is always the canonical encoding.
S3 ARNs carry no region or account (bucket names are global in AWS), so two S3 endpoints holding a
bucket of the same name would share an ARN: discovery has to refuse the second one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote

from backvault.domain.errors import InvalidParameterValueException

_PARTITION_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_REGION_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_ENDPOINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_VAULT_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_]{2,50}$")
_NAME_SAFE = "/-._~@+=,"

BACKUP_SERVICE = "backup"
BACKVAULT_SERVICE = "backvault"


@dataclass(frozen=True)
class ArnContext:
    """Where ARNs minted by this installation live: partition, region (storage location) and account."""

    partition: str = "aws"
    region: str = "local"
    account: str = "000000000000"

    def __post_init__(self) -> None:
        _check_partition(self.partition, str(self))
        if not _REGION_RE.match(self.region):
            raise InvalidParameterValueException(
                f"Region {self.region!r} is not valid: use lowercase letters, digits and hyphens."
            )
        if not _ACCOUNT_RE.match(self.account):
            raise InvalidParameterValueException(
                f"Account {self.account!r} is not valid: an account id is exactly 12 digits."
            )


@dataclass(frozen=True)
class Arn:
    """A syntactically valid ARN split into its six parts."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"


def parse_arn(text: str) -> Arn:
    """Split an ARN into its parts, raising InvalidParameterValueException when it is malformed."""
    if not isinstance(text, str):
        raise InvalidParameterValueException(f"An ARN must be a string, got {type(text).__name__}.")
    parts = text.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE."
        )
    _, partition, service, region, account, resource = parts
    _check_partition(partition, text)
    if not re.match(r"^[a-z0-9-]+$", service):
        raise InvalidParameterValueException(f"Invalid ARN {text!r}: the service part is empty or malformed.")
    if region and not _REGION_RE.match(region):
        raise InvalidParameterValueException(f"Invalid ARN {text!r}: region {region!r} is malformed.")
    if account and not _ACCOUNT_RE.match(account):
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: account {account!r} must be exactly 12 digits."
        )
    if not resource or any(ch.isspace() for ch in resource):
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: the resource part is empty or contains whitespace."
        )
    return Arn(partition, service, region, account, resource)


def _check_partition(partition: str, text: str) -> None:
    if not _PARTITION_RE.match(partition):
        raise InvalidParameterValueException(
            f"Invalid ARN partition {partition!r} in {text!r}: use lowercase letters, digits and hyphens "
            "(for example aws)."
        )


# --- backvault's own objects ---------------------------------------------------------------------


class BackupArnKind(StrEnum):
    """Resource types of the backup service, as they appear in ARNs."""

    BACKUP_VAULT = "backup-vault"
    BACKUP_PLAN = "backup-plan"
    RECOVERY_POINT = "recovery-point"
    LEGAL_HOLD = "legal-hold"
    FRAMEWORK = "framework"
    REPORT_PLAN = "report-plan"
    RESTORE_TESTING_PLAN = "restore-testing-plan"


@dataclass(frozen=True)
class BackupArn:
    """A parsed ARN of one of backvault's own objects."""

    partition: str
    region: str
    account: str
    kind: BackupArnKind
    identifier: str

    def __str__(self) -> str:
        prefix = f"arn:{self.partition}:{BACKUP_SERVICE}:{self.region}:{self.account}"
        return f"{prefix}:{self.kind}:{self.identifier}"


def build_backup_arn(context: ArnContext, kind: BackupArnKind, identifier: str) -> str:
    """Return the ARN of a backvault object of the given kind."""
    if not identifier or ":" in identifier or any(ch.isspace() for ch in identifier):
        raise InvalidParameterValueException(
            f"Cannot build a {kind} ARN from identifier {identifier!r}: it must be non-empty, without ':' "
            "or whitespace."
        )
    return str(BackupArn(context.partition, context.region, context.account, kind, identifier))


def parse_backup_arn(text: str, expected: BackupArnKind | None = None) -> BackupArn:
    """Parse an ARN of a backvault object, optionally insisting on its kind."""
    arn = parse_arn(text)
    if arn.service != BACKUP_SERVICE:
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: expected service 'backup', got {arn.service!r}."
        )
    if not arn.region or not arn.account:
        raise InvalidParameterValueException(f"Invalid ARN {text!r}: region and account are required.")
    kind_text, sep, identifier = arn.resource.partition(":")
    try:
        kind = BackupArnKind(kind_text)
    except ValueError:
        allowed = ", ".join(k.value for k in BackupArnKind)
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: unknown resource type {kind_text!r} (expected one of {allowed})."
        ) from None
    if not sep or not identifier or ":" in identifier:
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: expected {kind}:IDENTIFIER after the account."
        )
    if expected is not None and kind != expected:
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: expected a {expected} ARN, got a {kind} ARN."
        )
    if kind == BackupArnKind.BACKUP_VAULT and not _VAULT_NAME_RE.match(identifier):
        raise InvalidParameterValueException(
            f"Invalid ARN {text!r}: {identifier!r} is not a valid backup vault name "
            "(2-50 letters, digits, '-' or '_')."
        )
    if kind in (BackupArnKind.FRAMEWORK, BackupArnKind.RESTORE_TESTING_PLAN) and "-" not in identifier:
        raise InvalidParameterValueException(f"Invalid ARN {text!r}: expected {kind}:NAME-ID.")
    return BackupArn(arn.partition, arn.region, arn.account, kind, identifier)


def backup_vault_arn(context: ArnContext, vault_name: str) -> str:
    """Return the ARN of a backup vault."""
    return build_backup_arn(context, BackupArnKind.BACKUP_VAULT, vault_name)


def backup_plan_arn(context: ArnContext, plan_id: str) -> str:
    """Return the ARN of a backup plan."""
    return build_backup_arn(context, BackupArnKind.BACKUP_PLAN, plan_id)


def recovery_point_arn(context: ArnContext, recovery_point_id: str) -> str:
    """Return the ARN of a recovery point."""
    return build_backup_arn(context, BackupArnKind.RECOVERY_POINT, recovery_point_id)


def legal_hold_arn(context: ArnContext, legal_hold_id: str) -> str:
    """Return the ARN of a legal hold."""
    return build_backup_arn(context, BackupArnKind.LEGAL_HOLD, legal_hold_id)


def framework_arn(context: ArnContext, name: str, framework_id: str) -> str:
    """Return the ARN of an audit framework (AWS joins name and id with '-')."""
    return build_backup_arn(context, BackupArnKind.FRAMEWORK, f"{name}-{framework_id}")


def report_plan_arn(context: ArnContext, name: str) -> str:
    """Return the ARN of a report plan."""
    return build_backup_arn(context, BackupArnKind.REPORT_PLAN, name)


def restore_testing_plan_arn(context: ArnContext, name: str, plan_id: str) -> str:
    """Return the ARN of a restore testing plan (AWS joins name and id with '-')."""
    return build_backup_arn(context, BackupArnKind.RESTORE_TESTING_PLAN, f"{name}-{plan_id}")


def split_name_and_id(identifier: str) -> tuple[str, str]:
    """Split a framework or restore-testing-plan identifier NAME-ID; names of both never contain '-'."""
    name, sep, rest = identifier.partition("-")
    if not sep or not name or not rest:
        raise InvalidParameterValueException(f"Identifier {identifier!r} is not of the form NAME-ID.")
    return name, rest


# --- protected resources -------------------------------------------------------------------------


class ResourceType(StrEnum):
    """Resource types backvault protects, named the AWS way."""

    S3 = "S3"
    DYNAMODB = "DynamoDB"
    FILESYSTEM = "Filesystem"
    POSTGRESQL = "PostgreSQL"
    MYSQL = "MySQL"
    SQLITE = "SQLite"
    REDIS = "Redis"


# ARN resource-type token of each backvault-service resource; whether a name after the endpoint is
# required (a database server holds many databases, a directory endpoint is itself a resource); and
# whether the name is a relative path (its '/' kept) or an opaque name (its '/' percent-encoded).
_LOCAL_KINDS: dict[ResourceType, tuple[str, bool, bool]] = {
    ResourceType.FILESYSTEM: ("filesystem", False, True),
    ResourceType.POSTGRESQL: ("postgresql", True, False),
    ResourceType.MYSQL: ("mysql", True, False),
    ResourceType.SQLITE: ("sqlite", True, True),
    ResourceType.REDIS: ("redis", False, False),
}
_KIND_TO_TYPE = {spec[0]: rtype for rtype, spec in _LOCAL_KINDS.items()}


@dataclass(frozen=True)
class ResourceArn:
    """A parsed ARN of a protected resource; ``endpoint`` is None for S3 and DynamoDB."""

    partition: str
    region: str
    account: str
    resource_type: ResourceType
    endpoint: str | None
    name: str

    def __str__(self) -> str:
        if self.resource_type == ResourceType.S3:
            return f"arn:{self.partition}:s3:::{self.name}"
        if self.resource_type == ResourceType.DYNAMODB:
            return f"arn:{self.partition}:dynamodb:{self.region}:{self.account}:table/{self.name}"
        token, _required, is_path = _LOCAL_KINDS[self.resource_type]
        safe = _NAME_SAFE if is_path else _NAME_SAFE.replace("/", "")
        suffix = f"/{quote(self.name, safe=safe)}" if self.name else ""
        prefix = f"arn:{self.partition}:{BACKVAULT_SERVICE}:{self.region}:{self.account}"
        return f"{prefix}:{token}:{self.endpoint}{suffix}"


def build_resource_arn(
    context: ArnContext, resource_type: ResourceType | str, endpoint: str | None, name: str = ""
) -> str:
    """Return the ARN of a protected resource (S3: name is the bucket; DynamoDB: the table)."""
    rtype = _resource_type(resource_type)
    arn = ResourceArn(context.partition, context.region, context.account, rtype, endpoint, name)
    _validate_resource(arn, str(arn) if rtype in (ResourceType.S3, ResourceType.DYNAMODB) else name)
    return str(arn)


def parse_resource_arn(text: str) -> ResourceArn:
    """Parse the ARN of a protected resource into type, endpoint and name."""
    arn = parse_arn(text)
    if arn.service == "s3":
        if arn.region or arn.account:
            raise InvalidParameterValueException(
                f"Invalid S3 bucket ARN {text!r}: region and account must be empty (arn:aws:s3:::BUCKET)."
            )
        result = ResourceArn(arn.partition, "", "", ResourceType.S3, None, arn.resource)
    elif arn.service == "dynamodb":
        kind, sep, table = arn.resource.partition("/")
        if kind != "table" or not sep or "/" in table:
            raise InvalidParameterValueException(
                f"Invalid DynamoDB ARN {text!r}: expected arn:aws:dynamodb:REGION:ACCOUNT:table/NAME."
            )
        if not arn.region or not arn.account:
            raise InvalidParameterValueException(
                f"Invalid DynamoDB ARN {text!r}: region and account are required."
            )
        result = ResourceArn(arn.partition, arn.region, arn.account, ResourceType.DYNAMODB, None, table)
    elif arn.service == BACKVAULT_SERVICE:
        token, sep, rest = arn.resource.partition(":")
        if token not in _KIND_TO_TYPE or not sep:
            allowed = ", ".join(sorted(_KIND_TO_TYPE))
            raise InvalidParameterValueException(
                f"Invalid ARN {text!r}: unknown resource type {token!r} (expected one of {allowed})."
            )
        if not arn.region or not arn.account:
            raise InvalidParameterValueException(f"Invalid ARN {text!r}: region and account are required.")
        endpoint, _slash, encoded = rest.partition("/")
        result = ResourceArn(
            arn.partition, arn.region, arn.account, _KIND_TO_TYPE[token], endpoint, unquote(encoded)
        )
    else:
        raise InvalidParameterValueException(
            f"ARN {text!r} is not a resource backvault can protect (services: s3, dynamodb, backvault)."
        )
    _validate_resource(result, text)
    return result


def resource_type_of(resource_arn: str) -> ResourceType:
    """Return the resource type ("S3", "PostgreSQL", ...) named by a protected resource's ARN."""
    return parse_resource_arn(resource_arn).resource_type


def _resource_type(value: ResourceType | str) -> ResourceType:
    try:
        return ResourceType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in ResourceType)
        raise InvalidParameterValueException(
            f"Unknown resource type {value!r}; expected one of {allowed}."
        ) from None


def _validate_resource(arn: ResourceArn, shown: str) -> None:
    """Check the type-specific parts; ``shown`` is what the error message quotes."""
    if arn.resource_type == ResourceType.S3:
        if not _BUCKET_RE.match(arn.name) or ".." in arn.name:
            raise InvalidParameterValueException(
                f"Invalid S3 bucket ARN {shown!r}: {arn.name!r} is not a bucket name (3-63 lowercase "
                "letters, digits, '.' or '-'; objects inside a bucket are not separate resources)."
            )
        return
    if arn.resource_type == ResourceType.DYNAMODB:
        if not _TABLE_RE.match(arn.name):
            raise InvalidParameterValueException(
                f"Invalid DynamoDB ARN {shown!r}: {arn.name!r} is not a table name (3-255 letters, "
                "digits, '_', '-' or '.')."
            )
        return
    if arn.endpoint is None or not _ENDPOINT_RE.match(arn.endpoint):
        raise InvalidParameterValueException(
            f"Invalid resource {shown!r}: endpoint name {arn.endpoint!r} must be 1-63 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit."
        )
    _token, name_required, is_path = _LOCAL_KINDS[arn.resource_type]
    if name_required and not arn.name:
        raise InvalidParameterValueException(
            f"Invalid {arn.resource_type} resource {shown!r}: give ENDPOINT/NAME, the endpoint alone is "
            "not a resource."
        )
    if arn.name and is_path:
        segments = arn.name.split("/")
        if arn.name.startswith("/") or arn.name.endswith("/") or any(s in ("", ".", "..") for s in segments):
            raise InvalidParameterValueException(
                f"Invalid {arn.resource_type} resource {shown!r}: the name {arn.name!r} must be a relative "
                "path without empty, '.' or '..' segments."
            )
    if any(ord(ch) < 32 for ch in arn.name):
        raise InvalidParameterValueException(
            f"Invalid {arn.resource_type} resource {shown!r}: the name contains control characters."
        )
