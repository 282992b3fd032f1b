"""Storage locations: validation, listing, cold tiers, and deletion refused while in use."""

from __future__ import annotations

from pathlib import Path

import pytest

from backvault.control.context import ServiceContext
from backvault.control.locations import (
    create_storage_location,
    delete_storage_location,
    ensure_default_location,
    get_storage_location,
    list_storage_locations,
)
from backvault.control.vaults import create_backup_vault, delete_backup_vault
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
)


def test_default_location_exists_and_is_idempotent(context: ServiceContext, data_dir: Path) -> None:
    location = get_storage_location(context, "local")
    assert location["LocationType"] == "local"
    assert location["Path"] == str(data_dir / "vaults")
    assert ensure_default_location(context, Path("/elsewhere")) == location


def test_create_and_describe_an_s3_location_with_a_cold_storage_class(context: ServiceContext) -> None:
    created = create_storage_location(
        context,
        "eu-archive",
        "s3",
        bucket="backups",
        prefix="/team/a/",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        cold_storage_class="DEEP_ARCHIVE",
    )
    assert created == get_storage_location(context, "eu-archive")
    assert created["Prefix"] == "team/a"
    assert created["ColdStorage"] == {"StorageClass": "DEEP_ARCHIVE"}
    assert created["CreationDate"] == context.now()
    assert "Path" not in created


def test_cold_tier_in_another_location(context: ServiceContext, tmp_path: Path) -> None:
    create_storage_location(context, "cold", "local", path=str(tmp_path / "cold"))
    warm = create_storage_location(
        context, "warm", "local", path=str(tmp_path / "warm"), cold_location_name="cold"
    )
    assert warm["ColdStorage"] == {"LocationName": "cold"}
    with pytest.raises(InvalidRequestException, match="cold tier of 'warm'"):
        delete_storage_location(context, "cold")
    delete_storage_location(context, "warm")
    delete_storage_location(context, "cold")


@pytest.mark.parametrize(
    ("name", "kind", "settings", "message"),
    [
        ("Upper", "local", {"path": "/x"}, "LocationName 'Upper' is not valid"),
        ("has_underscore", "local", {"path": "/x"}, "is not valid"),
        ("rel", "local", {"path": "relative/dir"}, "absolute Path"),
        ("nopath", "local", {}, "absolute Path"),
        ("mixed", "local", {"path": "/x", "bucket": "b"}, "takes Path only"),
        ("nobucket", "s3", {}, "needs a Bucket"),
        ("badbucket", "s3", {"bucket": "bad/bucket"}, "bucket"),
        ("badendpoint", "s3", {"bucket": "b", "endpoint_url": "127.0.0.1:9000"}, "http:// or https://"),
        ("ftp", "ftp", {}, "LocationType 'ftp' is not supported"),
        ("selfcold", "local", {"path": "/x", "cold_location_name": "selfcold"}, "its own cold tier"),
        ("coldclass", "local", {"path": "/x", "cold_storage_class": "GLACIER"}, "needs an S3 location"),
        (
            "badclass",
            "s3",
            {"bucket": "b", "cold_storage_class": "FROZEN"},
            "needs an S3 location and one of",
        ),
        (
            "both",
            "s3",
            {"bucket": "b", "cold_storage_class": "GLACIER", "cold_location_name": "local"},
            "not both",
        ),
    ],
)
def test_invalid_locations_are_explained(
    context: ServiceContext, name: str, kind: str, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidParameterValueException, match=message):
        create_storage_location(context, name, kind, **settings)
    with pytest.raises(ResourceNotFoundException):
        get_storage_location(context, name)


def test_missing_cold_location_and_duplicates(context: ServiceContext, tmp_path: Path) -> None:
    with pytest.raises(ResourceNotFoundException, match="'nowhere'"):
        create_storage_location(context, "warm", "local", path=str(tmp_path), cold_location_name="nowhere")
    with pytest.raises(AlreadyExistsException):
        create_storage_location(context, "local", "local", path=str(tmp_path))


def test_deletion_is_refused_while_a_vault_lives_there(context: ServiceContext, tmp_path: Path) -> None:
    create_storage_location(context, "second", "local", path=str(tmp_path / "second"))
    create_backup_vault(context, "main", location_name="second")
    with pytest.raises(InvalidRequestException, match="backup vault\\(s\\) 'main' live in it"):
        delete_storage_location(context, "second")
    delete_backup_vault(context, "main")
    assert delete_storage_location(context, "second") == {}
    with pytest.raises(ResourceNotFoundException):
        delete_storage_location(context, "second")


def test_listing_pages_through_every_location(context: ServiceContext, tmp_path: Path) -> None:
    for name in ("c", "a", "b"):
        create_storage_location(context, name, "local", path=str(tmp_path / name))
    seen: list[str] = []
    token = None
    while True:
        page = list_storage_locations(context, next_token=token, max_results=2)
        seen += [location["LocationName"] for location in page["StorageLocations"]]
        token = page.get("NextToken")
        if token is None:
            break
    assert seen == ["a", "b", "c", "local"]
