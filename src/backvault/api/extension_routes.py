"""backvault's extension routes under ``/backvault/``: what AWS Backup has no API for.

Storage locations and notifications (notification_routes.py) always; source endpoints and discovery
when their services are installed. Each route is signed like the AWS operations and authorised as
``backvault:<Action>`` on an ARN of the object
(``arn:PARTITION:backvault:REGION:ACCOUNT:storage-location/NAME``, ``.../endpoint/NAME``; a
notification sink's own ``arn:aws:sns:...`` ARN; a vault's ARN for its notification settings).
Request and answer members use AWS's PascalCase naming, and timestamps are epoch seconds as in the
AWS API, so one client can read both.
"""

from __future__ import annotations

import importlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from backvault.api.auth import require_action
from backvault.api.operations import snake_case
from backvault.api.protocol import (
    JSON_CONTENT_TYPE,
    UnsupportedOperationException,
    internal_failure,
    redacted_traceback,
)
from backvault.control import locations
from backvault.domain.errors import BackupServiceError

if TYPE_CHECKING:
    from backvault.api.app import ApiState

logger = logging.getLogger(__name__)

PREFIX = "/backvault"
ResourceOf = Callable[[Request], str]


def extension_router(state: ApiState) -> APIRouter:
    """Return the router of the extension routes, bound to the app's state."""
    router = APIRouter(prefix=PREFIX)
    _storage_location_routes(router, state)
    _endpoint_routes(router, state)
    # Imported here: notification_routes builds on this module's plumbing.
    from backvault.api.notification_routes import add_notification_routes

    add_notification_routes(router, state)
    return router


# --- shared plumbing ---------------------------------------------------------------------------------


def json_answer(result: Any, status: int = 200) -> Response:
    """Return a JSON answer with datetimes as epoch seconds."""
    content = json.dumps(result, default=_json_default, separators=(",", ":"))
    return Response(content=content, status_code=status, media_type=JSON_CONTENT_TYPE)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return round(value.timestamp(), 6)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def guard(action: str, resource: ResourceOf | None = None) -> Any:
    """Return a dependency that authenticates, throttles and authorises ``backvault:<action>``."""

    def resources(request: Request) -> list[str]:
        return [resource(request)] if resource is not None else ["*"]

    return Depends(require_action(f"backvault:{action}", resources))


def _object_arn(state: ApiState, kind: str, parameter: str) -> ResourceOf:
    def resource(request: Request) -> str:
        context = state.context
        name = request.path_params.get(parameter, "")
        return f"arn:{context.partition}:backvault:{context.default_location}:{context.account}:{kind}/{name}"

    return resource


async def call_service(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a service in the thread pool; an unexpected error becomes a bare InternalFailure."""
    try:
        return await run_in_threadpool(function, *args, **kwargs)
    except BackupServiceError:
        raise
    except Exception as error:
        request_id = str(uuid.uuid4())
        logger.error("request %s (%s) failed:\n%s", request_id, function.__name__, redacted_traceback(error))
        raise internal_failure(request_id) from None


def members(model: BaseModel) -> dict[str, Any]:
    """Return a request model's given members as snake_case keyword arguments."""
    return {snake_case(key): value for key, value in model.model_dump(exclude_none=True).items()}


class RequestModel(BaseModel):
    """A request body: unknown members are refused, so a typo is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


# --- storage locations ------------------------------------------------------------------------------


class CreateStorageLocationRequest(RequestModel):
    """A storage location to register: a local directory, or an S3 bucket and prefix."""

    LocationName: str = Field(description="Name; it is the region part of the ARNs of the vaults in it.")
    LocationType: str = Field(description="'local' or 's3'.")
    Path: str | None = Field(default=None, description="Directory of a local location.")
    Bucket: str | None = Field(default=None, description="Bucket of an S3 location.")
    Prefix: str | None = Field(default=None, description="Key prefix inside the bucket.")
    EndpointUrl: str | None = Field(default=None, description="S3-compatible endpoint URL.")
    Region: str | None = Field(default=None, description="The S3 endpoint's region.")
    ColdLocationName: str | None = Field(default=None, description="Location that holds cold points.")
    ColdStorageClass: str | None = Field(default=None, description="S3 storage class for cold points.")


def _storage_location_routes(router: APIRouter, state: ApiState) -> None:
    context = state.context
    location = _object_arn(state, "storage-location", "location_name")

    @router.get(
        "/storage-locations",
        summary="List storage locations",
        tags=["storage locations"],
        dependencies=[guard("ListStorageLocations")],
    )
    async def list_storage_locations(
        next_token: str | None = Query(default=None, alias="nextToken"),
        max_results: int | None = Query(default=None, alias="maxResults"),
    ) -> Response:
        result = await call_service(
            locations.list_storage_locations, context, next_token=next_token, max_results=max_results
        )
        return json_answer(result)

    @router.post(
        "/storage-locations",
        summary="Register a storage location",
        tags=["storage locations"],
        dependencies=[guard("CreateStorageLocation")],
    )
    async def create_storage_location(request: CreateStorageLocationRequest) -> Response:
        return json_answer(await call_service(locations.create_storage_location, context, **members(request)))

    @router.get(
        "/storage-locations/{location_name}",
        summary="Describe a storage location",
        tags=["storage locations"],
        dependencies=[guard("GetStorageLocation", location)],
    )
    async def get_storage_location(location_name: str) -> Response:
        return json_answer(await call_service(locations.get_storage_location, context, location_name))

    @router.delete(
        "/storage-locations/{location_name}",
        summary="Forget a storage location",
        tags=["storage locations"],
        dependencies=[guard("DeleteStorageLocation", location)],
    )
    async def delete_storage_location(location_name: str) -> Response:
        return json_answer(await call_service(locations.delete_storage_location, context, location_name))


# --- source endpoints and discovery -----------------------------------------------------------------


def _service(module_name: str, function_name: str) -> Callable[..., Any]:
    module = importlib.import_module(f"backvault.control.{module_name}")
    function: Callable[..., Any] | None = getattr(module, function_name, None)
    if function is None or not callable(function):
        raise UnsupportedOperationException(
            f"This backvault server has no {module_name.replace('_', ' ')} service ({function_name})."
        )
    return function


class RegisterEndpointRequest(RequestModel):
    """A source endpoint: where resources of one type live, and how to reach them."""

    EndpointName: str = Field(description="Name, unique; it appears in the ARNs of its resources.")
    EndpointType: str = Field(description="Resource type: Filesystem, PostgreSQL, MySQL, SQLite, Redis, ...")
    Connection: dict[str, Any] = Field(description="Connection settings of the connector (no secrets).")
    Credentials: dict[str, Any] | str | None = Field(
        default=None,
        description="Secrets, stored encrypted; or 'env:NAME' to read them from the server's env.",
    )
    DefaultTags: dict[str, str] | None = Field(
        default=None, description="Tags every resource behind it gets."
    )


class UpdateEndpointRequest(RequestModel):
    """Changes to a source endpoint; absent members stay as they are."""

    Connection: dict[str, Any] | None = None
    Credentials: dict[str, Any] | str | None = None
    DefaultTags: dict[str, str] | None = None


def _endpoint_routes(router: APIRouter, state: ApiState) -> None:
    context = state.context
    endpoint = _object_arn(state, "endpoint", "endpoint_name")

    async def run(module: str, function: str, *args: Any, **kwargs: Any) -> Response:
        return json_answer(await call_service(_service(module, function), context, *args, **kwargs))

    @router.get(
        "/endpoints",
        summary="List source endpoints",
        tags=["source endpoints"],
        dependencies=[guard("ListSourceEndpoints")],
    )
    async def list_endpoints(
        endpoint_type: str | None = Query(default=None, alias="endpointType"),
        next_token: str | None = Query(default=None, alias="nextToken"),
        max_results: int | None = Query(default=None, alias="maxResults"),
    ) -> Response:
        return await run(
            "endpoints",
            "list_source_endpoints",
            by_endpoint_type=endpoint_type,
            next_token=next_token,
            max_results=max_results,
        )

    @router.post(
        "/endpoints",
        summary="Register a source endpoint",
        tags=["source endpoints"],
        dependencies=[guard("RegisterSourceEndpoint")],
    )
    async def register_endpoint(request: RegisterEndpointRequest) -> Response:
        return await run("endpoints", "register_source_endpoint", **members(request))

    @router.get(
        "/endpoints/{endpoint_name}",
        summary="Describe a source endpoint",
        tags=["source endpoints"],
        dependencies=[guard("DescribeSourceEndpoint", endpoint)],
    )
    async def describe_endpoint(endpoint_name: str) -> Response:
        return await run("endpoints", "describe_source_endpoint", endpoint_name)

    @router.put(
        "/endpoints/{endpoint_name}",
        summary="Update a source endpoint",
        tags=["source endpoints"],
        dependencies=[guard("UpdateSourceEndpoint", endpoint)],
    )
    async def update_endpoint(endpoint_name: str, request: UpdateEndpointRequest) -> Response:
        return await run("endpoints", "update_source_endpoint", endpoint_name, **members(request))

    @router.delete(
        "/endpoints/{endpoint_name}",
        summary="Delete a source endpoint",
        tags=["source endpoints"],
        dependencies=[guard("DeleteSourceEndpoint", endpoint)],
    )
    async def delete_endpoint(endpoint_name: str) -> Response:
        return await run("endpoints", "delete_source_endpoint", endpoint_name)

    @router.post(
        "/endpoints/{endpoint_name}/discover",
        summary="Discover the resources behind one endpoint now",
        tags=["discovery"],
        dependencies=[guard("DiscoverResources", endpoint)],
    )
    async def discover_endpoint(endpoint_name: str) -> Response:
        return await run("discovery", "discover_endpoint", endpoint_name)

    @router.post(
        "/discovery",
        summary="Discover the resources behind every endpoint now",
        tags=["discovery"],
        dependencies=[guard("DiscoverResources")],
    )
    async def discover_all() -> Response:
        return await run("discovery", "discover_all")

    @router.get(
        "/resources",
        summary="List every discovered resource, with native tags and whether it is still seen",
        tags=["discovery"],
        dependencies=[guard("ListDiscoveredResources")],
    )
    async def list_discovered_resources(
        endpoint_name: str | None = Query(default=None, alias="endpointName"),
        resource_type: str | None = Query(default=None, alias="resourceType"),
        include_vanished: bool = Query(default=True, alias="includeVanished"),
        next_token: str | None = Query(default=None, alias="nextToken"),
        max_results: int | None = Query(default=None, alias="maxResults"),
    ) -> Response:
        return await run(
            "discovery",
            "list_discovered_resources",
            endpoint_name=endpoint_name,
            resource_type=resource_type,
            include_vanished=include_vanished,
            next_token=next_token,
            max_results=max_results,
        )
