"""Checking an endpoint's connection settings, with errors that name the endpoint and the setting."""

from __future__ import annotations

from typing import Any

from backvault.sources.base import ConnectorError, EndpointSpec


def seconds_setting(endpoint: EndpointSpec, key: str, value: Any) -> int:
    """Return a positive whole number of seconds, or refuse the setting by name."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = 0
    if seconds <= 0:
        raise ConnectorError(
            f"endpoint {endpoint.name}: connection.{key} {value!r} must be a number of seconds"
        )
    return seconds


def port_setting(endpoint: EndpointSpec, value: Any) -> int:
    """Return a TCP port (1-65535), or refuse connection.port."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise ConnectorError(
            f"endpoint {endpoint.name}: connection.port {value!r} is not a TCP port (1-65535)"
        )
    return port


def patterns_setting(endpoint: EndpointSpec, key: str, value: Any) -> list[str]:
    """Return a list of name patterns (a single string is one pattern), or refuse the setting."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConnectorError(f"endpoint {endpoint.name}: connection.{key} must be a list of name patterns")
    return list(value)
