"""Client profiles of the operator CLI: where the backvault API is and which access key signs for it.

Profiles live in ``$XDG_CONFIG_HOME/backvault/config.toml`` (``~/.config/backvault/config.toml``)::

    [profiles.default]
    endpoint_url = "http://127.0.0.1:8080"
    region = "local"
    access_key_id = "BVAK..."
    secret_access_key = "..."

The file holds a secret, so it is written with mode 0600 in a 0700 directory. What a command uses is
resolved in this order, first found wins:

* profile name: ``--profile``, ``$BACKVAULT_PROFILE``, ``default``;
* endpoint: ``--endpoint-url``, ``$BACKVAULT_ENDPOINT_URL``, the profile;
* region: ``$BACKVAULT_REGION``, the profile, ``local``;
* key pair: ``$BACKVAULT_ACCESS_KEY_ID``/``$BACKVAULT_SECRET_ACCESS_KEY``, then
  ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` (skipped when ``--profile`` names a profile
  explicitly, as the AWS CLI does), then the profile.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROFILE = "default"
DEFAULT_REGION = "local"
CONFIG_FILE_NAME = "config.toml"
PROFILE_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key")

PROFILE_ENV = "BACKVAULT_PROFILE"
ENDPOINT_ENV = "BACKVAULT_ENDPOINT_URL"
REGION_ENV = "BACKVAULT_REGION"
KEY_PAIRS_ENV = (
    ("BACKVAULT_ACCESS_KEY_ID", "BACKVAULT_SECRET_ACCESS_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
)

_PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


class ConfigError(Exception):
    """The client configuration is missing, unreadable or incomplete; the message says what to do."""


@dataclass(frozen=True)
class Profile:
    """Everything a command needs to reach and sign for the API (the secret never in a repr)."""

    name: str
    endpoint_url: str
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the profile file's path, honouring XDG_CONFIG_HOME."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "backvault" / CONFIG_FILE_NAME


def validate_profile_name(name: str) -> str:
    """Return the name if it can be a profile name (letters, digits, '_' and '-')."""
    if not _PROFILE_NAME_RE.match(name):
        raise ConfigError(
            f"profile name {name!r} is not valid: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def validate_endpoint_url(url: str) -> str:
    """Return the URL without a trailing slash if it is an http(s) URL."""
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise ConfigError(
            f"endpoint URL {url!r} is not valid: give the server's http:// or https:// URL, for example "
            "http://127.0.0.1:8080"
        )
    return url.rstrip("/")


def validate_region(region: str) -> str:
    """Return the region if it looks like a region name (the server's signing region)."""
    if not _REGION_RE.match(region):
        raise ConfigError(f"region {region!r} is not valid: use letters, digits and '-' (default 'local')")
    return region


def load_profiles(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Return the profiles in the config file (none if the file does not exist)."""
    path = path or config_path()
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(f"cannot read the client configuration {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"the client configuration {path} is not valid TOML: {error}") from None
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"the client configuration {path}: 'profiles' must be a table of profiles")
    answer: dict[str, dict[str, str]] = {}
    for name, values in profiles.items():
        if not isinstance(values, dict):
            raise ConfigError(f"the client configuration {path}: profile {name!r} must be a table")
        answer[name] = {str(key): str(value) for key, value in values.items() if key in PROFILE_KEYS}
    return answer


def save_profile(name: str, values: Mapping[str, str], path: Path | None = None) -> Path:
    """Add or replace one profile in the config file (written 0600, atomically); return the path."""
    path = path or config_path()
    validate_profile_name(name)
    profiles = load_profiles(path)
    profiles[name] = {key: str(values[key]) for key in PROFILE_KEYS if values.get(key)}
    _write_profiles(path, profiles)
    return path


def _write_profiles(path: Path, profiles: Mapping[str, Mapping[str, str]]) -> None:
    lines = ["# backvault client profiles (written by 'backvault configure'); keep this file private.", ""]
    for name in sorted(profiles):
        lines.append(f"[profiles.{_toml_key(name)}]")
        for key in PROFILE_KEYS:
            if key in profiles[name]:
                lines.append(f"{key} = {_toml_string(profiles[name][key])}")
        lines.append("")
    text = "\n".join(lines)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # Created 0600 from the start: the secret is never readable by others, not even briefly.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o600)  # O_CREAT keeps the mode of a leftover file
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as error:
        raise ConfigError(f"cannot write the client configuration {path}: {error.strerror}") from None


def _toml_key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else _toml_string(name)


def _toml_string(value: str) -> str:
    """Return a TOML basic string (quotes, backslashes and control characters escaped)."""
    escaped = []
    for character in value:
        if character in ('"', "\\"):
            escaped.append("\\" + character)
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            escaped.append(f"\\u{ord(character):04x}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def resolve_profile(
    profile_option: str | None = None,
    endpoint_option: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Profile:
    """Return the settings a command uses: options, then the environment, then the profile file."""
    environ = os.environ if environ is None else environ
    path = path or config_path(environ)
    name = validate_profile_name(profile_option or environ.get(PROFILE_ENV) or DEFAULT_PROFILE)
    profiles = load_profiles(path)
    stored = profiles.get(name)
    if stored is None and (profile_option or environ.get(PROFILE_ENV)) and name != DEFAULT_PROFILE:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"profile {name!r} is not in {path} (profiles there: {known}); create it with "
            f"'backvault configure --profile {name}'"
        )
    stored = stored or {}
    endpoint = endpoint_option or environ.get(ENDPOINT_ENV) or stored.get("endpoint_url")
    if not endpoint:
        raise ConfigError(
            f"no API endpoint for profile {name!r}: run 'backvault configure', set {ENDPOINT_ENV} or pass "
            "--endpoint-url"
        )
    region = environ.get(REGION_ENV) or stored.get("region") or DEFAULT_REGION
    key_pair = _key_pair_from_environment(environ, skip_aws=profile_option is not None)
    if key_pair is None:
        access_key_id, secret = stored.get("access_key_id"), stored.get("secret_access_key")
        if not access_key_id or not secret:
            raise ConfigError(
                f"no access key for profile {name!r}: run 'backvault configure' (or set "
                "BACKVAULT_ACCESS_KEY_ID and BACKVAULT_SECRET_ACCESS_KEY)"
            )
        key_pair = (access_key_id, secret)
    return Profile(
        name=name,
        endpoint_url=validate_endpoint_url(endpoint),
        region=validate_region(region),
        access_key_id=key_pair[0],
        secret_access_key=key_pair[1],
    )


def _key_pair_from_environment(environ: Mapping[str, str], *, skip_aws: bool) -> tuple[str, str] | None:
    for id_variable, secret_variable in KEY_PAIRS_ENV:
        if skip_aws and id_variable.startswith("AWS_"):
            continue
        access_key_id, secret = environ.get(id_variable), environ.get(secret_variable)
        if access_key_id and secret:
            return access_key_id, secret
        if access_key_id or secret:
            present, missing = (
                (id_variable, secret_variable) if access_key_id else (secret_variable, id_variable)
            )
            raise ConfigError(f"{present} is set but {missing} is not: set both, or neither")
    return None
