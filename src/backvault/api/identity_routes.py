"""``/backvault/users``: users, their inline policies and access keys over HTTP (a backvault extension).

Every route is signed with SigV4 like the AWS operations and authorized as ``backvault:<Action>`` on
the user's ARN (``arn:aws:iam::ACCOUNT:user/NAME``), or on ``*`` for listing and creating users. A
new access key's secret is in the answer to its creation only, sent with ``Cache-Control: no-store``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from backvault.api.auth import Principal, require_action
from backvault.control import identity

router = APIRouter(prefix="/backvault/users", tags=["users and access keys"])


def _user_resource(request: Request) -> Sequence[str]:
    context = request.app.state.context
    return [identity.user_arn(context, str(request.path_params.get("user_name", "")))]


def _allowed(action: str, *, on_user: bool = True) -> Any:
    return Depends(require_action(f"backvault:{action}", _user_resource if on_user else None))


class CreateUserInput(BaseModel):
    """Body of POST /backvault/users."""

    model_config = ConfigDict(extra="forbid")
    UserName: str = Field(description="1-64 letters, digits and + = , . @ _ -")


class PutUserPolicyInput(BaseModel):
    """Body of PUT /backvault/users/{user_name}/policies/{policy_name}."""

    model_config = ConfigDict(extra="forbid")
    PolicyDocument: dict[str, Any] | str = Field(
        description="an IAM policy document, as an object or JSON text"
    )


class UpdateAccessKeyInput(BaseModel):
    """Body of PUT /backvault/users/{user_name}/access-keys/{access_key_id}."""

    model_config = ConfigDict(extra="forbid")
    Status: str = Field(description="Active or Inactive")


@router.get("", summary="List users")
async def list_users(
    request: Request, _: Annotated[Principal, _allowed("ListUsers", on_user=False)]
) -> dict[str, Any]:
    """Return every user."""
    return await run_in_threadpool(identity.list_users, request.app.state.context)


@router.post("", summary="Create a user")
async def create_user(
    request: Request, body: CreateUserInput, _: Annotated[Principal, _allowed("CreateUser", on_user=False)]
) -> dict[str, Any]:
    """Create a user without policies or keys."""
    return await run_in_threadpool(identity.create_user, request.app.state.context, body.UserName)


@router.get("/{user_name}", summary="Describe a user")
async def get_user(
    request: Request, user_name: str, _: Annotated[Principal, _allowed("GetUser")]
) -> dict[str, Any]:
    """Return one user."""
    return await run_in_threadpool(identity.get_user, request.app.state.context, user_name)


@router.delete("/{user_name}", summary="Delete a user")
async def delete_user(
    request: Request, user_name: str, _: Annotated[Principal, _allowed("DeleteUser")], force: bool = False
) -> dict[str, Any]:
    """Delete a user; with force=true also its keys and policies."""
    context = request.app.state.context
    return await run_in_threadpool(lambda: identity.delete_user(context, user_name, force=force))


@router.get("/{user_name}/policies", summary="List a user's inline policies")
async def list_user_policies(
    request: Request, user_name: str, _: Annotated[Principal, _allowed("ListUserPolicies")]
) -> dict[str, Any]:
    """Return the names of the user's inline policies."""
    return await run_in_threadpool(identity.list_user_policies, request.app.state.context, user_name)


@router.put("/{user_name}/policies/{policy_name}", summary="Add or replace an inline policy")
async def put_user_policy(
    request: Request,
    user_name: str,
    policy_name: str,
    body: PutUserPolicyInput,
    _: Annotated[Principal, _allowed("PutUserPolicy")],
) -> dict[str, Any]:
    """Store an inline policy of the user (validated first)."""
    context = request.app.state.context
    return await run_in_threadpool(
        identity.put_user_policy, context, user_name, policy_name, body.PolicyDocument
    )


@router.get("/{user_name}/policies/{policy_name}", summary="Get an inline policy")
async def get_user_policy(
    request: Request, user_name: str, policy_name: str, _: Annotated[Principal, _allowed("GetUserPolicy")]
) -> dict[str, Any]:
    """Return one inline policy of the user."""
    context = request.app.state.context
    return await run_in_threadpool(identity.get_user_policy, context, user_name, policy_name)


@router.delete("/{user_name}/policies/{policy_name}", summary="Delete an inline policy")
async def delete_user_policy(
    request: Request, user_name: str, policy_name: str, _: Annotated[Principal, _allowed("DeleteUserPolicy")]
) -> dict[str, Any]:
    """Delete one inline policy of the user."""
    context = request.app.state.context
    return await run_in_threadpool(identity.delete_user_policy, context, user_name, policy_name)


@router.get("/{user_name}/access-keys", summary="List a user's access keys (never their secrets)")
async def list_access_keys(
    request: Request, user_name: str, _: Annotated[Principal, _allowed("ListAccessKeys")]
) -> dict[str, Any]:
    """Return the user's keys without secrets."""
    return await run_in_threadpool(identity.list_access_keys, request.app.state.context, user_name)


@router.post("/{user_name}/access-keys", summary="Create an access key (the secret is shown once)")
async def create_access_key(
    request: Request, user_name: str, _: Annotated[Principal, _allowed("CreateAccessKey")]
) -> JSONResponse:
    """Create a key; the answer is the only place its SecretAccessKey ever appears."""
    answer = await run_in_threadpool(identity.create_access_key, request.app.state.context, user_name)
    return JSONResponse(jsonable_encoder(answer), headers={"Cache-Control": "no-store"})


@router.put("/{user_name}/access-keys/{access_key_id}", summary="Activate or deactivate an access key")
async def update_access_key(
    request: Request,
    user_name: str,
    access_key_id: str,
    body: UpdateAccessKeyInput,
    _: Annotated[Principal, _allowed("UpdateAccessKey")],
) -> dict[str, Any]:
    """Set the key's status."""
    context = request.app.state.context
    return await run_in_threadpool(
        lambda: identity.update_access_key(context, access_key_id, body.Status, user_name=user_name)
    )


@router.delete("/{user_name}/access-keys/{access_key_id}", summary="Delete an access key")
async def delete_access_key(
    request: Request, user_name: str, access_key_id: str, _: Annotated[Principal, _allowed("DeleteAccessKey")]
) -> dict[str, Any]:
    """Delete one of the user's keys."""
    context = request.app.state.context
    return await run_in_threadpool(
        lambda: identity.delete_access_key(context, access_key_id, user_name=user_name)
    )
