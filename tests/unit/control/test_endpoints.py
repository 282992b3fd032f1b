"""Source endpoints: registration checked by the connector, credentials never stored or shown in clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from backvault.control.catalog import Event, ProtectedResource, SourceEndpoint
from backvault.control.context import ServiceContext
from backvault.control.endpoints import (
    delete_source_endpoint,
    describe_source_endpoint,
    endpoint_spec,
    list_source_endpoints,
    register_source_endpoint,
    update_source_endpoint,
)
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
)

SECRET = "s3cr3t-Pa55w0rd"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory root with one resource."""
    path = tmp_path / "files"
    (path / "docs").mkdir(parents=True)
    return path


def events(context: ServiceContext, event_type: str) -> list[Event]:
    """The events of one type, oldest first."""
    with context.catalog.transaction() as session:
        return list(session.scalars(select(Event).where(Event.event_type == event_type).order_by(Event.id)))


def test_register_describe_list(context: ServiceContext, root: Path) -> None:
    answer = register_source_endpoint(
        context, "files", "Filesystem", {"root": str(root)}, default_tags={"backup": "daily"}
    )
    assert answer["EndpointName"] == "files"
    assert answer["EndpointType"] == "Filesystem"
    assert answer["Connection"] == {"root": str(root)}
    assert answer["DefaultTags"] == {"backup": "daily"}
    assert answer["CredentialsType"] == "NONE"
    assert answer["CreationDate"] == context.now()
    assert describe_source_endpoint(context, "files") == answer
    register_source_endpoint(context, "other", "Filesystem", {"root": str(root)})
    listed = list_source_endpoints(context)
    assert [item["EndpointName"] for item in listed["SourceEndpoints"]] == ["files", "other"]
    first = list_source_endpoints(context, max_results=1)
    second = list_source_endpoints(context, max_results=1, next_token=first["NextToken"])
    assert [item["EndpointName"] for item in first["SourceEndpoints"] + second["SourceEndpoints"]] == [
        "files",
        "other",
    ]
    assert list_source_endpoints(context, by_endpoint_type="PostgreSQL")["SourceEndpoints"] == []
    registered = events(context, "SOURCE_ENDPOINT_REGISTERED")
    assert [event.detail["EndpointName"] for event in registered] == ["files", "other"]


def test_registration_refuses_bad_input(context: ServiceContext, root: Path) -> None:
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    with pytest.raises(AlreadyExistsException):
        register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    with pytest.raises(InvalidParameterValueException, match="EndpointName"):
        register_source_endpoint(context, "bad name", "Filesystem", {"root": str(root)})
    with pytest.raises(InvalidParameterValueException, match="EndpointType 'Floppy'"):
        register_source_endpoint(context, "floppy", "Floppy", {"root": str(root)})
    with pytest.raises(InvalidParameterValueException, match="does not exist"):
        register_source_endpoint(context, "gone", "Filesystem", {"root": str(root / "missing")})
    with pytest.raises(InvalidParameterValueException, match="looks like a secret"):
        register_source_endpoint(context, "leaky", "Filesystem", {"root": str(root), "password": SECRET})
    with pytest.raises(InvalidParameterValueException, match="env:NAME"):
        register_source_endpoint(
            context, "ref", "Filesystem", {"root": str(root)}, credentials_reference="PW"
        )
    with pytest.raises(InvalidRequestException, match="not both"):
        register_source_endpoint(
            context,
            "both",
            "Filesystem",
            {"root": str(root)},
            credentials={"password": SECRET},
            credentials_reference="env:PW",
        )
    # An endpoint that does not work yet can still be stored when asked.
    stored = register_source_endpoint(context, "later", "Filesystem", {"root": str(root / "x")}, check=False)
    assert stored["EndpointName"] == "later"


def test_clear_credentials_are_stored_wrapped_and_never_shown(context: ServiceContext, root: Path) -> None:
    answer = register_source_endpoint(
        context, "files", "Filesystem", {"root": str(root)}, credentials={"password": SECRET}
    )
    assert answer["CredentialsType"] == "STORED"
    assert "CredentialsReference" not in answer
    assert SECRET not in json.dumps(answer, default=str)
    assert SECRET not in json.dumps(list_source_endpoints(context), default=str)
    with context.catalog.transaction() as session:
        row = session.get(SourceEndpoint, "files")
        assert row is not None
        assert row.credentials_reference is not None
        assert row.credentials_reference.startswith("bvw1:")
        assert SECRET not in row.credentials_reference
        registered = [json.dumps(event.detail) for event in session.scalars(select(Event))]
    assert all(SECRET not in detail for detail in registered)
    spec = endpoint_spec(context, "files")
    assert spec.credentials == {"password": SECRET}
    assert SECRET not in repr(spec)


def test_environment_reference(context: ServiceContext, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BV_FILES_SECRET", json.dumps({"user": "backup", "password": SECRET}))
    answer = register_source_endpoint(
        context, "files", "Filesystem", {"root": str(root)}, credentials_reference="env:BV_FILES_SECRET"
    )
    assert answer["CredentialsType"] == "ENVIRONMENT"
    assert answer["CredentialsReference"] == "env:BV_FILES_SECRET"
    assert endpoint_spec(context, "files").credentials == {"user": "backup", "password": SECRET}
    monkeypatch.setenv("BV_FILES_SECRET", SECRET)
    assert endpoint_spec(context, "files").credentials == {"password": SECRET}
    # HTTP clients send the reference as Credentials: "env:NAME".
    again = register_source_endpoint(
        context, "again", "Filesystem", {"root": str(root)}, credentials="env:BV_FILES_SECRET"
    )
    assert again["CredentialsReference"] == "env:BV_FILES_SECRET"
    monkeypatch.delenv("BV_FILES_SECRET")
    with pytest.raises(DependencyFailureException, match=r"\$BV_FILES_SECRET, which is not set"):
        endpoint_spec(context, "files")


def test_update(context: ServiceContext, root: Path, tmp_path: Path) -> None:
    register_source_endpoint(
        context, "files", "Filesystem", {"root": str(root)}, credentials={"password": "x"}
    )
    other = tmp_path / "other"
    other.mkdir()
    answer = update_source_endpoint(
        context, "files", connection={"root": str(other)}, default_tags={"a": "b"}
    )
    assert answer["Connection"] == {"root": str(other)}
    assert answer["DefaultTags"] == {"a": "b"}
    assert answer["CredentialsType"] == "STORED"  # untouched
    with pytest.raises(InvalidParameterValueException, match="does not exist"):
        update_source_endpoint(context, "files", connection={"root": str(tmp_path / "nowhere")})
    assert describe_source_endpoint(context, "files")["Connection"] == {"root": str(other)}
    assert update_source_endpoint(context, "files", clear_credentials=True)["CredentialsType"] == "NONE"
    assert endpoint_spec(context, "files").credentials == {}
    with pytest.raises(ResourceNotFoundException):
        update_source_endpoint(context, "nobody", default_tags={})


def test_delete_detaches_resources_and_records_event(context: ServiceContext, root: Path) -> None:
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    arn = "arn:aws:backvault:local:000000000000:filesystem:files/docs"
    with context.catalog.transaction() as session:
        session.add(
            ProtectedResource(
                arn=arn,
                resource_type="Filesystem",
                endpoint_name="files",
                resource_name="docs",
                native_tags={},
                creation_date=context.now(),
            )
        )
    assert delete_source_endpoint(context, "files") == {}
    with pytest.raises(ResourceNotFoundException):
        describe_source_endpoint(context, "files")
    with context.catalog.transaction() as session:
        resource = session.get(ProtectedResource, arn)
        assert resource is not None
        assert resource.endpoint_name is None
    [deleted] = events(context, "SOURCE_ENDPOINT_DELETED")
    assert deleted.detail == {"EndpointName": "files", "EndpointType": "Filesystem"}
    with pytest.raises(ResourceNotFoundException):
        delete_source_endpoint(context, "files")
