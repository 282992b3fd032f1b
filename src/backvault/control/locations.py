"""Storage locations: where vault repositories live (a local directory or an S3 bucket and prefix).

A location's name is backvault's "region": it is the region part of the ARNs of the vaults in it,
so it follows ARN region rules. AWS has no API for this; the HTTP layer serves it under
``/backvault/storage-locations`` and the answers use AWS's naming style.

The cold tier of a location is either another location (points move there) or, for S3, a storage
class of the same bucket (objects are rewritten with that class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.models import BackupVault, StorageLocation
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.pagination import paginate
from backvault.domain.arn import ArnContext
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.storage.base import ObjectStore
from backvault.storage.url import open_store

LOCAL = "local"
S3 = "s3"
LOCATION_TYPES = (LOCAL, S3)
# S3 classes a cold tier may use: colder than STANDARD and readable back by a restore.
S3_COLD_STORAGE_CLASSES = (
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)


def validate_location_name(name: Any) -> str:
    """Return ``name`` if it can be a location name (it must be a valid ARN region)."""
    text = expect_str(name, "LocationName")
    try:
        ArnContext(region=text)
    except InvalidParameterValueException:
        raise InvalidParameterValueException(
            f"LocationName {text!r} is not valid: it is the region of the ARNs of its vaults, so use 1-63 "
            "lowercase letters, digits and hyphens, starting with a letter or digit."
        ) from None
    return text


def create_storage_location(
    context: ServiceContext,
    location_name: str,
    location_type: str,
    *,
    path: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    cold_location_name: str | None = None,
    cold_storage_class: str | None = None,
) -> dict[str, Any]:
    """Register a storage location; nothing is written to it until a vault is created there."""
    name = validate_location_name(location_name)
    row = StorageLocation(name=name, location_type=location_type, creation_date=context.now())
    if location_type == LOCAL:
        _local_settings(row, path, bucket, prefix, endpoint_url, region)
    elif location_type == S3:
        _s3_settings(row, path, bucket, prefix, endpoint_url, region)
    else:
        raise InvalidParameterValueException(
            f"LocationType {location_type!r} is not supported; use one of {', '.join(LOCATION_TYPES)}."
        )
    _check_store_url(row)
    with context.catalog.transaction() as session:
        if session.get(StorageLocation, name) is not None:
            raise AlreadyExistsException(f"Storage location {name!r} already exists.")
        _cold_tier(session, row, cold_location_name, cold_storage_class)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(f"Storage location {name!r} already exists.") from None
        record_event(
            session, EventType.STORAGE_LOCATION_CREATED, row.creation_date, detail={"Location": name}
        )
        return location_to_aws(row)


def ensure_default_location(context: ServiceContext, path: Path) -> dict[str, Any]:
    """Create the default location as a local directory if it does not exist yet (zero-setup start)."""
    with context.catalog.transaction() as session:
        row = session.get(StorageLocation, context.default_location)
        if row is not None:
            return location_to_aws(row)
    try:
        return create_storage_location(
            context, context.default_location, LOCAL, path=str(Path(path).absolute())
        )
    except AlreadyExistsException:
        return get_storage_location(context, context.default_location)  # another process won the race


def get_storage_location(context: ServiceContext, location_name: str) -> dict[str, Any]:
    """Describe one storage location."""
    with context.catalog.transaction() as session:
        return location_to_aws(get_location_row(session, location_name))


def list_storage_locations(
    context: ServiceContext, *, next_token: str | None = None, max_results: int | None = None
) -> dict[str, Any]:
    """List storage locations by name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(StorageLocation),
            [StorageLocation.name],
            operation="ListStorageLocations",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"StorageLocations": [location_to_aws(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def delete_storage_location(context: ServiceContext, location_name: str) -> dict[str, Any]:
    """Forget a location; refused while a vault lives in it or another location uses it as cold tier."""
    with context.catalog.transaction() as session:
        # Exclusive row lock: a vault being created here (which holds a share lock) finishes first.
        row = get_location_row(session, location_name, lock="update")
        vaults = list(session.scalars(select(BackupVault.name).where(BackupVault.location_name == row.name)))
        if vaults:
            raise InvalidRequestException(
                f"Storage location {row.name!r} cannot be deleted: backup vault(s) {_few(vaults)} live in "
                "it. Delete the vaults first."
            )
        users = list(
            session.scalars(
                select(StorageLocation.name).where(StorageLocation.cold_location_name == row.name)
            )
        )
        if users:
            raise InvalidRequestException(
                f"Storage location {row.name!r} cannot be deleted: it is the cold tier of {_few(users)}."
            )
        session.delete(row)
        record_event(
            session, EventType.STORAGE_LOCATION_DELETED, context.now(), detail={"Location": row.name}
        )
        return {}


def get_location_row(
    session: Session, location_name: str, *, lock: Literal["share", "update"] | None = None
) -> StorageLocation:
    """Return the location row, row-locked on PostgreSQL if asked, or raise ResourceNotFoundException."""
    statement = select(StorageLocation).where(
        StorageLocation.name == expect_str(location_name, "LocationName")
    )
    if lock is not None:
        statement = statement.with_for_update(read=lock == "share")
    row = session.scalars(statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Storage location {location_name!r} does not exist.")
    return row


def vault_repository_url(location: StorageLocation, vault_name: str) -> str:
    """Return where a vault's repository lives: ``<path>/<vault>`` or ``s3://bucket/prefix/<vault>``."""
    if location.location_type == LOCAL:
        return str(Path(location.path or "") / vault_name)
    prefix = f"{location.prefix}/" if location.prefix else ""
    return f"s3://{location.bucket}/{prefix}{vault_name}"


def open_location_store(location: StorageLocation, url: str) -> ObjectStore:
    """Open the object store at ``url`` with the location's S3 endpoint and region."""
    return open_store(url, endpoint_url=location.endpoint_url, region=location.s3_region)


def location_to_aws(row: StorageLocation) -> dict[str, Any]:
    """Return the API shape of a location (members that do not apply are left out)."""
    body: dict[str, Any] = {"LocationName": row.name, "LocationType": row.location_type}
    optional = {
        "Path": row.path,
        "Bucket": row.bucket,
        "Prefix": row.prefix,
        "EndpointUrl": row.endpoint_url,
        "Region": row.s3_region,
    }
    body.update({key: value for key, value in optional.items() if value})
    if row.cold_location_name:
        body["ColdStorage"] = {"LocationName": row.cold_location_name}
    elif row.cold_storage_class:
        body["ColdStorage"] = {"StorageClass": row.cold_storage_class}
    body["CreationDate"] = row.creation_date
    return body


# --- validation ----------------------------------------------------------------------------------


def _local_settings(row: StorageLocation, path: str | None, *s3_only: str | None) -> None:
    if any(s3_only):
        raise InvalidParameterValueException(
            "A local location takes Path only; Bucket, Prefix, EndpointUrl and Region are for S3."
        )
    text = expect_str(path, "Path") if path is not None else ""
    # A relative path would depend on the directory the server happens to start in.
    if not text or not Path(text).is_absolute():
        raise InvalidParameterValueException(f"A local location needs an absolute Path, got {text!r}.")
    row.path = str(Path(text))


def _s3_settings(
    row: StorageLocation,
    path: str | None,
    bucket: str | None,
    prefix: str | None,
    endpoint_url: str | None,
    region: str | None,
) -> None:
    if path:
        raise InvalidParameterValueException("An S3 location takes Bucket and Prefix, not Path.")
    if not bucket:
        raise InvalidParameterValueException("An S3 location needs a Bucket.")
    row.bucket = expect_str(bucket, "Bucket")
    if "/" in row.bucket:
        raise InvalidParameterValueException(
            f"Bucket {bucket!r} must be a bucket name alone; give the path inside it as Prefix."
        )
    row.prefix = expect_str(prefix, "Prefix").strip("/") if prefix else None
    if endpoint_url is not None and not expect_str(endpoint_url, "EndpointUrl").startswith(
        ("http://", "https://")
    ):
        raise InvalidParameterValueException(
            f"EndpointUrl {endpoint_url!r} must start with http:// or https://."
        )
    row.endpoint_url = endpoint_url or None
    row.s3_region = expect_str(region, "Region") if region else None


def _check_store_url(row: StorageLocation) -> None:
    # The storage layer owns the rules for buckets, prefixes and paths; opening is local (no I/O).
    url = vault_repository_url(row, "probe")
    try:
        store = open_location_store(row, url)
    except ValueError as error:
        raise InvalidParameterValueException(f"Storage location {row.name!r}: {error}.") from None
    store.close()


def _cold_tier(
    session: Session, row: StorageLocation, cold_location_name: str | None, cold_storage_class: str | None
) -> None:
    if cold_location_name and cold_storage_class:
        raise InvalidParameterValueException(
            "Give either a cold location (ColdLocationName) or an S3 storage class (ColdStorageClass), "
            "not both."
        )
    if cold_location_name:
        if cold_location_name == row.name:
            raise InvalidParameterValueException(
                f"Storage location {row.name!r} cannot be its own cold tier."
            )
        get_location_row(session, cold_location_name, lock="share")
        row.cold_location_name = cold_location_name
    elif cold_storage_class:
        if row.location_type != S3 or cold_storage_class not in S3_COLD_STORAGE_CLASSES:
            raise InvalidParameterValueException(
                f"ColdStorageClass {cold_storage_class!r} needs an S3 location and one of "
                f"{', '.join(S3_COLD_STORAGE_CLASSES)}."
            )
        row.cold_storage_class = cold_storage_class


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
