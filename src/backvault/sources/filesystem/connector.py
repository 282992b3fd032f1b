"""The filesystem connector: every subdirectory of a root directory is a resource.

Endpoint connection settings::

    {"root": "/abs/dir",              # required: the directory whose subdirectories are resources
     "excludes": ["*.tmp", ...],      # optional: exclude patterns applied to every backup
     "one_file_system": false,        # optional: do not cross filesystem boundaries
     "cache_dir": "/abs/cache",       # optional: where the local files cache lives
     "with_atime": false,             # optional: record access times (see metadata.NameCache)
     "processes": 1}                  # optional: walk in this many forked processes (see below)

``processes`` is 1 by default here, unlike ``backvault repo backup`` (one per core): the
service runs jobs on threads, and a process forked while another thread holds a C library's
lock (OpenSSL, malloc arenas of other libraries) could hang. Set it on a host that runs one
job at a time and wants the speed (sources/filesystem/subtrees.py).

Discovery lists the immediate subdirectories of the root (hidden ones, starting with ``.``, and
symlinks are skipped). A resource's tags come from an optional ``.backvault-tags`` file in its
directory, laid over the endpoint's default tags. The file's format, one tag per line::

    # comments start with '#'; blank lines are ignored
    backup = daily
    owner=team-photos

Key and value are stripped of surrounding blanks; the key is 1-128 characters and may not start
with ``aws:``, the value 0-256 characters; a key given twice is an error. A malformed line makes
discovery fail with an error naming the file and the line number.

Restore metadata: ``TargetPath`` (absolute, or relative to the root; default a new sibling
``<name>-restored-<UTC time>`` next to the resource) and ``Overwrite`` (``"true"`` to restore into a
non-empty existing directory: entries of the snapshot replace entries of the same name, others are
left alone). The snapshot is first restored into a hidden staging directory beside the target and
then moved into place, so a failed restore leaves no half-written target behind. A restored copy
inside the root is a resource named by its path below the root; a copy outside the root is named
by its absolute path (it has no ARN of its own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from backvault.domain.arn import ResourceType
from backvault.repo.blob import BlobType
from backvault.repo.chunker import make_chunker
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    DiscoveredResource,
    EndpointSpec,
    Heartbeat,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
    ValidationRequest,
)
from backvault.sources.filesystem.backup import BackupError, backup_paths, latest_parent, root_names
from backvault.sources.filesystem.restore import restore_snapshot

TAGS_FILE_NAME = ".backvault-tags"
MAX_TAGS_FILE_BYTES = 64 * 1024
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
_CONNECTION_KEYS = {"root", "excludes", "one_file_system", "cache_dir", "with_atime", "processes"}
_RESTORE_KEYS = {"TargetPath", "Overwrite"}
_HEARTBEAT_INTERVAL = 1.0  # seconds; the walk reports progress more often than a lease needs
_READ_BLOCK = 1 << 20
_MAX_LISTED_PROBLEMS = 20


class _ThrottledHeartbeat:
    """Pass progress on to the job's heartbeat, at most once per interval (always on force)."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat
        self.last = 0.0

    def __call__(self, processed: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= _HEARTBEAT_INTERVAL:
            self.last = now
            self.heartbeat(processed)


class FilesystemConnector:
    """Directories below a root: discovery, backup with the files cache, restore and validation."""

    resource_type = ResourceType.FILESYSTEM

    # --- endpoints and discovery ---------------------------------------------------------------

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """Raise ConnectorError unless the connection names an existing, readable directory root."""
        settings = _settings(endpoint)
        root = settings["root"]
        try:
            info = os.stat(root)
        except FileNotFoundError:
            raise ConnectorError(
                f"Endpoint {endpoint.name!r}: root {root} does not exist; create it or fix 'root'."
            ) from None
        except OSError as error:
            raise ConnectorError(
                f"Endpoint {endpoint.name!r}: cannot reach root {root}: {error.strerror}."
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConnectorError(f"Endpoint {endpoint.name!r}: root {root} is not a directory.")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConnectorError(
                f"Endpoint {endpoint.name!r}: root {root} is not readable by this server (user id "
                f"{os.geteuid()}); grant read and search permission."
            )

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """List the root's visible subdirectories with their tags over the endpoint's defaults."""
        self.check_endpoint(endpoint)
        root = _settings(endpoint)["root"]
        found: list[DiscoveredResource] = []
        try:
            entries = sorted(os.scandir(root), key=lambda entry: entry.name)
        except OSError as error:
            raise ConnectorError(
                f"Endpoint {endpoint.name!r}: cannot list {root}: {error.strerror}."
            ) from None
        for entry in entries:
            if entry.name.startswith(".") or not _is_utf8(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue  # vanished while listing
            tags = dict(endpoint.default_tags)
            tags.update(read_tags_file(os.path.join(root, entry.name, TAGS_FILE_NAME)))
            found.append(DiscoveredResource(name=entry.name, tags=tags))
        return found

    # --- backup --------------------------------------------------------------------------------

    def backup(self, request: BackupRequest) -> Snapshot:
        """Back up the resource's directory; unchanged files come from the previous snapshot."""
        settings = _settings(request.endpoint)
        _refuse_unknown_options(request.options)
        path = _resource_path(request.endpoint, settings["root"], request.resource_name)
        _require_directory(
            path, f"Resource {request.resource_name or '(root)'!r} of {request.endpoint.name!r}"
        )
        heartbeat = _ThrottledHeartbeat(request.heartbeat)
        heartbeat(0, force=True)  # a stop requested before we started ends the job here
        try:
            parent = latest_parent(request.repository, [path])
            snapshot = backup_paths(
                request.repository,
                [path],
                tags=list(request.tags),
                excludes=list(settings.get("excludes") or ()),
                one_file_system=bool(settings.get("one_file_system", False)),
                parent=parent,
                progress=lambda info: heartbeat(info.bytes_read),
                cache_dir=settings.get("cache_dir"),
                with_atime=bool(settings.get("with_atime", False)),
                processes=settings.get("processes", 1),
            )
        except BackupError as error:
            raise ConnectorError(f"Backup of {path} failed: {error}.") from None
        except OSError as error:
            raise ConnectorError(f"Backup of {path} failed: {_describe(error)}.") from None
        # No heartbeat after the commit: a stop raised there would orphan a committed snapshot.
        return snapshot

    # --- restore -------------------------------------------------------------------------------

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """Return the accepted metadata with defaults: a new sibling directory, no overwriting."""
        root = _settings(endpoint)["root"]
        return {"TargetPath": _default_target(root, resource_name), "Overwrite": "false"}

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Restore into TargetPath through a staging directory; refuse a non-empty target unless told."""
        root = _settings(request.endpoint)["root"]
        metadata = dict(request.metadata)
        unknown = sorted(set(metadata) - _RESTORE_KEYS)
        if unknown:
            raise ConnectorError(
                f"Unknown restore metadata {', '.join(unknown)} for a Filesystem resource; accepted: "
                f"{', '.join(sorted(_RESTORE_KEYS))}."
            )
        overwrite = _flag(metadata.get("Overwrite", "false"), "Overwrite")
        target = _target_path(
            root, metadata.get("TargetPath") or _default_target(root, request.resource_name)
        )
        if os.path.realpath(target) == os.path.realpath(root):
            raise ConnectorError(
                f"TargetPath {target} is the endpoint's root; restore into a directory below it."
            )
        existed = _check_target(target, overwrite)
        parent_directory = os.path.dirname(target)
        try:
            os.makedirs(parent_directory, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.restoring-", dir=parent_directory)
        except OSError as error:
            raise ConnectorError(
                f"Cannot prepare the restore next to {target}: {_describe(error)}."
            ) from None
        heartbeat = _ThrottledHeartbeat(request.heartbeat)
        try:
            heartbeat(0, force=True)
            result = restore_snapshot(
                request.repository,
                request.snapshot,
                staging,
                progress=lambda progress: heartbeat(progress.bytes_written),
            )
            restored_root = os.path.join(staging, os.fsdecode(_root_name(request.snapshot)))
            if not os.path.isdir(restored_root):
                raise ConnectorError(
                    f"Snapshot {request.snapshot.short_id} holds no directory to restore "
                    f"({'; '.join(problem for _, problem in result.errors[:3]) or 'its root is missing'})."
                )
            _move_into_place(restored_root, target, existed)
        except OSError as error:
            raise ConnectorError(f"Restore into {target} failed: {_describe(error)}.") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        problems = [f"{path}: {problem}" for path, problem in result.errors]
        return RestoreOutcome(
            resource_name=_resource_name_of(root, target),
            bytes_restored=result.bytes_written,
            problems=problems,
        )

    # --- validation and clean-up --------------------------------------------------------------

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Compare the restored tree with the snapshot: every entry, type, size and content hash."""
        root = _settings(request.endpoint)["root"]
        target = _target_path(root, request.resource_name)
        repository = request.repository
        root_node = _snapshot_root(repository, request.snapshot)
        checker = _TreeComparison(repository, request.heartbeat)
        if root_node is None or root_node.subtree is None:
            return ValidationOutcome(False, "The snapshot holds no directory tree to compare with.")
        try:
            _require_directory(target, "The restored copy")
        except ConnectorError as error:
            return ValidationOutcome(False, str(error))
        checker.compare_directory(root_node.subtree, target, "")
        details: dict[str, Any] = {
            "FilesCompared": checker.files,
            "BytesCompared": checker.bytes,
            "DirectoriesCompared": checker.directories,
            "Problems": checker.problems[:_MAX_LISTED_PROBLEMS],
            "ProblemCount": len(checker.problems),
        }
        if checker.problems:
            shown = "; ".join(checker.problems[:3])
            more = f" (and {len(checker.problems) - 3} more)" if len(checker.problems) > 3 else ""
            return ValidationOutcome(
                False, f"The restored copy differs from the snapshot: {shown}{more}.", details
            )
        message = f"{checker.files} files ({checker.bytes} bytes) match the snapshot."
        return ValidationOutcome(True, message, details)

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Remove a directory a restore created (never the root or anything holding it)."""
        root = _settings(endpoint)["root"]
        target = _target_path(root, resource_name)
        real_target, real_root = os.path.realpath(target), os.path.realpath(root)
        if real_target == "/" or real_root == real_target or real_root.startswith(real_target + os.sep):
            raise ConnectorError(f"Refusing to delete {target}: it is or holds the endpoint's root.")
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return  # already gone: deleting is idempotent
        except OSError as error:
            raise ConnectorError(f"Cannot delete {target}: {_describe(error)}.") from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConnectorError(f"Refusing to delete {target}: it is not a directory a restore created.")
        try:
            shutil.rmtree(target)
        except OSError as error:
            raise ConnectorError(f"Cannot delete {target}: {_describe(error)}.") from None


# --- tags files ----------------------------------------------------------------------------------


def parse_tags(text: str, source: str) -> dict[str, str]:
    """Parse the ``.backvault-tags`` format (see the module docstring); errors name source and line."""
    tags: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        key, value = key.strip(), value.strip()
        where = f"{source}, line {number}"
        if not separator or not key:
            raise ConnectorError(f"{where}: expected KEY=VALUE, got {raw.strip()!r}.")
        if len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ConnectorError(
                f"{where}: a tag key is at most {MAX_TAG_KEY} characters and a value at most {MAX_TAG_VALUE}."
            )
        if key.lower().startswith("aws:"):
            raise ConnectorError(f"{where}: tag keys starting with 'aws:' are reserved.")
        if key in tags:
            raise ConnectorError(f"{where}: tag {key!r} is given twice; keep one line for it.")
        tags[key] = value
    return tags


def read_tags_file(path: str) -> dict[str, str]:
    """Return the tags in a ``.backvault-tags`` file, or none if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConnectorError(f"{path}: cannot read the tags file: {_describe(error)}.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConnectorError(f"{path}: the tags file must be a regular file.")
        data = os.read(fd, MAX_TAGS_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TAGS_FILE_BYTES:
        raise ConnectorError(f"{path}: the tags file is larger than {MAX_TAGS_FILE_BYTES} bytes.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConnectorError(f"{path}: the tags file is not UTF-8 text.") from None
    return parse_tags(text, path)


# --- helpers -------------------------------------------------------------------------------------


def _settings(endpoint: EndpointSpec) -> dict[str, Any]:
    """Validate the connection settings and return them with an absolute, normalised root."""
    connection = dict(endpoint.connection)
    unknown = sorted(set(connection) - _CONNECTION_KEYS)
    if unknown:
        raise ConnectorError(
            f"Endpoint {endpoint.name!r}: unknown connection setting(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(sorted(_CONNECTION_KEYS))}."
        )
    root = connection.get("root")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise ConnectorError(
            f"Endpoint {endpoint.name!r}: connection 'root' must be an absolute directory path, got {root!r}."
        )
    connection["root"] = os.path.normpath(root)
    excludes = connection.get("excludes")
    if excludes is not None and (
        not isinstance(excludes, list | tuple) or not all(isinstance(item, str) for item in excludes)
    ):
        raise ConnectorError(f"Endpoint {endpoint.name!r}: 'excludes' must be a list of patterns.")
    for flag in ("one_file_system", "with_atime"):
        if not isinstance(connection.get(flag, False), bool):
            raise ConnectorError(f"Endpoint {endpoint.name!r}: {flag!r} must be true or false.")
    processes = connection.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 64:
        raise ConnectorError(
            f"Endpoint {endpoint.name!r}: 'processes' must be a whole number from 1 to 64, got {processes!r}."
        )
    cache_dir = connection.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not os.path.isabs(cache_dir)):
        raise ConnectorError(f"Endpoint {endpoint.name!r}: 'cache_dir' must be an absolute path.")
    return connection


def _is_utf8(name: str) -> bool:
    # scandir decodes undecodable bytes as surrogates; such names cannot be put in an ARN.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _resource_path(endpoint: EndpointSpec, root: str, resource_name: str) -> str:
    """Return the directory of a resource, refusing names that would leave the root."""
    parts = resource_name.split("/") if resource_name else []
    if resource_name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ConnectorError(
            f"Resource name {resource_name!r} of endpoint {endpoint.name!r} must be a relative path "
            "without empty, '.' or '..' segments."
        )
    return os.path.join(root, *parts)


def _require_directory(path: str, what: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConnectorError(
            f"{what} ({path}) does not exist; it may have been removed or renamed."
        ) from None
    except OSError as error:
        raise ConnectorError(f"{what} ({path}) cannot be reached: {_describe(error)}.") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConnectorError(f"{what} ({path}) is not a directory.")


def _refuse_unknown_options(options: Mapping[str, str]) -> None:
    if options:
        raise ConnectorError(
            f"Filesystem backups take no BackupOptions (got {', '.join(sorted(options))}); set excludes "
            "on the endpoint instead."
        )


def _describe(error: OSError) -> str:
    detail = error.strerror or str(error)
    return f"{detail} ({error.filename})" if error.filename else detail


def _flag(value: Any, name: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0", ""):
        return False
    raise ConnectorError(f"Restore metadata {name} must be 'true' or 'false', got {value!r}.")


def _default_target(root: str, resource_name: str) -> str:
    """A new directory next to the resource (inside the root for the root itself)."""
    moment = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if resource_name:
        base = os.path.join(root, *resource_name.split("/"))
    else:
        base = os.path.join(root, os.path.basename(root) or "root")
    return f"{base}-restored-{moment}"


def _target_path(root: str, target: str) -> str:
    """Make a TargetPath absolute (relative ones are below the root) and refuse '..' tricks."""
    if not isinstance(target, str) or not target:
        raise ConnectorError("TargetPath must be a non-empty path.")
    if "\0" in target or any(part == ".." for part in target.split("/")):
        raise ConnectorError(f"TargetPath {target!r} must not contain '..' segments or NUL bytes.")
    absolute = target if os.path.isabs(target) else os.path.join(root, target)
    return os.path.normpath(absolute)


def _check_target(target: str, overwrite: bool) -> bool:
    """Return whether the target exists; refuse a non-empty one unless overwriting is asked for."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise ConnectorError(f"Cannot inspect TargetPath {target}: {_describe(error)}.") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConnectorError(f"TargetPath {target} exists and is not a directory; choose another path.")
    try:
        empty = not os.listdir(target)
    except OSError as error:
        raise ConnectorError(f"Cannot list TargetPath {target}: {_describe(error)}.") from None
    if not empty and not overwrite:
        raise ConnectorError(
            f"TargetPath {target} exists and is not empty; choose a new path or set Metadata "
            'Overwrite="true" to restore over it.'
        )
    return True


def _move_into_place(restored_root: str, target: str, existed: bool) -> None:
    """Move the staged copy to the target: a rename, or entry by entry over an existing directory."""
    if not existed:
        os.rename(restored_root, target)
        return
    for name in os.listdir(restored_root):
        destination = os.path.join(target, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(destination) and not os.path.islink(destination):
                shutil.rmtree(destination)
            else:
                os.unlink(destination)
        os.rename(os.path.join(restored_root, name), destination)
    # The directory itself takes the snapshot's permissions and times, as a fresh restore would.
    source = os.stat(restored_root)
    os.chmod(target, stat.S_IMODE(source.st_mode))
    os.utime(target, ns=(source.st_atime_ns, source.st_mtime_ns))


def _resource_name_of(root: str, target: str) -> str:
    """Name a restored copy relative to the root, or by its absolute path when it lies outside."""
    relative = os.path.relpath(target, root)
    if relative == ".." or relative.startswith("../") or relative == ".":
        return target
    return relative


def _root_name(snapshot: Snapshot) -> bytes:
    if len(snapshot.paths) != 1:
        raise ConnectorError(
            f"Snapshot {snapshot.short_id} holds {len(snapshot.paths)} paths; a Filesystem resource "
            "snapshot holds exactly one directory."
        )
    return root_names(snapshot.paths)[0]


def _snapshot_root(repository: Repository, snapshot: Snapshot) -> Node | None:
    return repository.load_tree(snapshot.tree).find(_root_name(snapshot))


class _TreeComparison:
    """Walks a snapshot tree next to a directory and collects every difference."""

    def __init__(self, repository: Repository, heartbeat: Heartbeat) -> None:
        self.repository = repository
        self.heartbeat = _ThrottledHeartbeat(heartbeat)
        self.params = repository.config.chunker
        self.chunker = make_chunker(self.params)
        self.problems: list[str] = []
        self.files = 0
        self.bytes = 0
        self.directories = 0

    def compare_directory(self, tree_id: str, directory: str, shown: str) -> None:
        """Compare one directory level and recurse into subdirectories."""
        self.directories += 1
        expected = {node.name: node for node in self.repository.load_tree(tree_id).nodes}
        try:
            present = {os.fsencode(name) for name in os.listdir(directory)}
        except OSError as error:
            self.problems.append(f"{shown or '/'}: cannot list: {_describe(error)}")
            return
        for extra in sorted(present - set(expected)):
            self.problems.append(f"{_join(shown, extra)}: not in the snapshot")
        for name, node in sorted(expected.items()):
            path = os.path.join(os.fsencode(directory), name)
            label = _join(shown, name)
            if name not in present:
                self.problems.append(f"{label}: missing")
                continue
            self.compare_entry(node, path, label)

    def compare_entry(self, node: Node, path: bytes, label: str) -> None:
        """Compare one entry's type and, for files and directories, their content."""
        try:
            info = os.lstat(path)
        except OSError as error:
            self.problems.append(f"{label}: {_describe(error)}")
            return
        if node.type == "dir":
            if not stat.S_ISDIR(info.st_mode):
                self.problems.append(f"{label}: expected a directory")
            elif node.subtree is not None:
                self.compare_directory(node.subtree, os.fsdecode(path), label)
        elif node.type == "file":
            if not stat.S_ISREG(info.st_mode):
                self.problems.append(f"{label}: expected a regular file")
            elif info.st_size != node.size:
                self.problems.append(f"{label}: size {info.st_size}, the snapshot says {node.size}")
            elif self.content_ids(path) != node.content:
                self.problems.append(f"{label}: content differs from the snapshot")
            else:
                self.files += 1
                self.bytes += node.size
                self.heartbeat(self.bytes)
        elif node.type == "symlink" and (
            not stat.S_ISLNK(info.st_mode) or os.readlink(path) != node.link_target
        ):
            self.problems.append(f"{label}: expected a symlink to {node.link_target!r}")

    def content_ids(self, path: bytes) -> list[str]:
        """Chunk the file as the backup did and return its chunk ids (keyed content hashes)."""
        codec = self.repository.codec
        with open(path, "rb", buffering=_READ_BLOCK) as stream:
            if os.fstat(stream.fileno()).st_size < self.params.min_size:
                data = stream.read()
                return [codec.blob_id(BlobType.DATA, data).hex()] if data else []
            return [
                codec.blob_id(BlobType.DATA, bytes(chunk.data)).hex()
                for chunk in self.chunker.cut_stream(stream)
            ]


def _join(prefix: str, name: bytes) -> str:
    text = os.fsdecode(name)
    return f"{prefix}/{text}" if prefix else text
