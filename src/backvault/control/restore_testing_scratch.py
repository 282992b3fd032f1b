"""Where a restore test restores: a scratch copy beside the original that the test owns and deletes.

A database, bucket or table gets a new ``bvtest-`` name on the same server; a directory goes under
$BACKVAULT_RESTORE_TEST_DIR or the data directory's ``restore-tests``. Discovery never takes a
``bvtest-`` name for a resource (see ``discovery``).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from backvault.control.catalog.models import StorageLocation
from backvault.control.catalog.restore_testing_models import SCRATCH_PREFIX
from backvault.control.context import ServiceContext
from backvault.control.locations import LOCAL
from backvault.domain.arn import ResourceType
from backvault.sources.base import EndpointSpec

SCRATCH_DIRECTORY_VARIABLE = "BACKVAULT_RESTORE_TEST_DIR"


def scratch_target(
    context: ServiceContext, spec: EndpointSpec, defaults: dict[str, str], short_id: str
) -> tuple[dict[str, str], str | None, bool]:
    """Restore metadata naming a new scratch copy; also its name and whether that name is the test's own."""
    metadata = dict(defaults)
    name = f"{SCRATCH_PREFIX}{short_id}"
    kind = spec.endpoint_type
    if kind == ResourceType.FILESYSTEM:
        path = os.path.join(scratch_directory(context, spec), name)
        metadata.update({"TargetPath": path, "Overwrite": "false"})
        return metadata, path, True
    if kind in (ResourceType.POSTGRESQL, ResourceType.MYSQL):
        metadata["DatabaseName"] = name
        return metadata, name, True
    if kind == ResourceType.SQLITE:
        original = defaults.get("DatabasePath") or "restored.db"
        suffix = posixpath.splitext(original)[1] or ".db"
        path = posixpath.join(posixpath.dirname(original), name + suffix)
        metadata["DatabasePath"] = path
        return metadata, path, True
    if kind == ResourceType.S3:
        metadata.update({"TargetBucket": name, "TargetPrefix": "", "NewBucket": "true", "Overwrite": "false"})
        return metadata, name, True
    if kind == ResourceType.DYNAMODB:
        metadata["TargetTableName"] = name
        return metadata, name, True
    # Redis restores into a free database index the connector picked: not a name the test owns, so
    # only a copy the restore reports is ever deleted.
    if "Overwrite" in metadata:
        metadata["Overwrite"] = "false"
    return metadata, None, False


def scratch_directory(context: ServiceContext, spec: EndpointSpec) -> str:
    """Where Filesystem tests restore: $BACKVAULT_RESTORE_TEST_DIR, else DATA_DIR/restore-tests.

    The data directory is the one holding the default local location (``DATA_DIR/vaults``); with an
    S3 default location, a hidden directory in the endpoint's root is used (discovery skips it).
    """
    configured = os.environ.get(SCRATCH_DIRECTORY_VARIABLE)
    if configured:
        return os.path.abspath(configured)
    with context.catalog.transaction() as session:
        location = session.get(StorageLocation, context.default_location)
        path = location.path if location is not None and location.location_type == LOCAL else None
    if path:
        return str(Path(path).absolute().parent / "restore-tests")
    return os.path.join(str(spec.connection.get("root") or "/"), ".backvault-restore-tests")
