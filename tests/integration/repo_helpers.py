"""Helpers for repository integration tests that drive the real `backvault repo` CLI.

Every command runs in a fresh Python process, the way users run it, with the passphrase
and repository in the environment. Source trees are generated from a seed, so a failing
test can be rerun with the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from backvault.repo.blob import BlobType
from backvault.repo.config import CONFIG_KEY
from backvault.repo.repository import Repository
from backvault.storage.local import LocalStore

PASSWORD = "correct horse battery staple"
SECOND_PASSWORD = "a second, different passphrase"
KIB = 1024
MIB = 1024 * 1024
# Small packs so that a few MB of data spread over many packs (the default is 16 MiB).
SMALL_PACK_SIZE = 1 * MIB

# The console script `backvault` calls backvault.cli.main:main; so does this, in a fresh interpreter.
_ENTRY = "import sys; from backvault.cli.main import main; sys.argv[0] = 'backvault'; main()"


# --- running the CLI ------------------------------------------------------------------------


@dataclass
class CliResult:
    """What one CLI run printed and returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, for 'the output names X' assertions."""
        return self.stdout + "\n" + self.stderr

    def json(self) -> Any:
        """Parse stdout as JSON (commands run with --json)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"stdout is not JSON ({error}):\n{self.describe()}") from error

    def describe(self) -> str:
        """Everything about the run, for assertion messages."""
        return (
            f"$ backvault {' '.join(self.args)}\nexit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def cli_env(
    repo: str | os.PathLike[str] | None,
    password: str | None = PASSWORD,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a CLI subprocess: no inherited BACKVAULT_* settings, fast KDF, given repo/pw."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKVAULT_")}
    env["BACKVAULT_TEST_FAST_KDF"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if repo is not None:
        env["BACKVAULT_REPOSITORY"] = os.fspath(repo)
    if password is not None:
        env["BACKVAULT_PASSWORD"] = password
    env.update(extra or {})
    return env


def cli_command(*args: str) -> list[str]:
    """argv that runs `backvault repo ARGS...` in a fresh interpreter."""
    return [sys.executable, "-c", _ENTRY, "repo", *args]


def run_cli(
    *args: str | os.PathLike[str],
    repo: str | os.PathLike[str] | None,
    password: str | None = PASSWORD,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    cwd: str | os.PathLike[str] | None = None,
) -> CliResult:
    """Run `backvault repo ARGS...` to completion (stdin is not a terminal)."""
    argv = [os.fspath(arg) for arg in args]
    completed = subprocess.run(
        cli_command(*argv),
        env=cli_env(repo, password, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    return CliResult(argv, completed.returncode, completed.stdout, completed.stderr)


def start_cli(
    *args: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    password: str | None = PASSWORD,
    env: Mapping[str, str] | None = None,
    output_dir: Path,
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start `backvault repo ARGS...` in the background; stdout/stderr go to files in output_dir."""
    argv = [os.fspath(arg) for arg in args]
    output_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = output_dir / "stdout"
    stderr_path = output_dir / "stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            cli_command(*argv),
            env=cli_env(repo, password, env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    return process, stdout_path, stderr_path


def finish_cli(
    process: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path, timeout: float = 300
) -> CliResult:
    """Wait for a background CLI run and collect its result."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    argv = [str(arg) for arg in process.args[3:]] if isinstance(process.args, list) else []
    return CliResult(
        argv,
        process.returncode,
        stdout_path.read_text(errors="replace"),
        stderr_path.read_text(errors="replace"),
    )


def ok(result: CliResult) -> CliResult:
    """Assert the run succeeded and return it."""
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    return result


def backup(repo: Path, *paths: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run `repo backup --json` and return the snapshot document it prints."""
    document: dict[str, Any] = ok(run_cli("backup", "--json", *extra, *paths, repo=repo)).json()
    assert document["partial"] is False, document
    return document


def check_json(repo: Path, *extra: str, password: str = PASSWORD) -> tuple[CliResult, dict[str, Any]]:
    """Run `repo check --json EXTRA...`; return the run and its report."""
    result = run_cli("check", "--json", *extra, repo=repo, password=password)
    assert "Traceback" not in result.stderr, result.describe()
    return result, result.json()


def assert_check_clean(repo: Path, *extra: str) -> dict[str, Any]:
    """check (with EXTRA options) must pass with no problems; notes are allowed."""
    result, report = check_json(repo, *extra)
    assert result.returncode == 0, result.describe()
    assert report["ok"] is True and report["problems"] == [], result.describe()
    return report


# --- repositories ---------------------------------------------------------------------------


@contextmanager
def fast_kdf() -> Iterator[None]:
    """Cheap Argon2 for key objects created in this process (restored afterwards)."""
    with mock.patch.dict(os.environ, {"BACKVAULT_TEST_FAST_KDF": "1"}):
        yield


def init_repository(path: Path, *, pack_size: int = SMALL_PACK_SIZE, password: str = PASSWORD) -> None:
    """Create a repository with small packs (Repository.init has no pack-size option)."""
    with fast_kdf():
        repository = Repository.init(LocalStore(path), password)
    config = dataclasses.replace(repository.config, pack_size=pack_size)
    repository.store.put(CONFIG_KEY, config.to_object(repository.sealer))


def open_repository(path: Path, password: str = PASSWORD) -> Repository:
    """Open a local repository in this process (to inspect it, never to change it)."""
    return Repository.open(LocalStore(path), password)


def files_by_snapshot(repo: Path) -> dict[str, dict[str, list[str]]]:
    """snapshot id -> {"/root/path": [chunk ids]} for every regular file, named as check names it."""
    repository = open_repository(repo)
    files: dict[str, dict[str, list[str]]] = {}
    for snapshot in repository.list_snapshots():
        found: dict[str, list[str]] = {}
        stack = [(snapshot.tree, "")]
        while stack:
            tree_id, path = stack.pop()
            for node in repository.load_tree(tree_id).nodes:
                child = f"{path}/{os.fsdecode(node.name)}"
                if node.type == "file":
                    found[child] = list(node.content)
                if node.subtree:
                    stack.append((node.subtree, child))
        files[snapshot.id] = found
    return files


def tree_blob_ids(repository: Repository) -> set[bytes]:
    """Ids of every tree blob in the index."""
    return {
        blob_id
        for pack_id in repository.index.packs
        for blob_id, location in repository.index.entries_of(pack_id)
        if location.type == BlobType.TREE
    }


def object_keys(repo: Path, prefix: str) -> list[str]:
    """Keys of the stored objects under prefix (e.g. 'data/', 'index/')."""
    return sorted(info.key for info in LocalStore(repo).list(prefix))


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Flip the lowest bit of one byte (the middle one by default); return its offset."""
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    return where


# --- source trees ---------------------------------------------------------------------------

_WORDS = [
    "backup",
    "restore",
    "snapshot",
    "chunk",
    "pack",
    "index",
    "key",
    "config",
    "prune",
    "forget",
    "check",
    "lock",
    "vault",
    "plan",
    "rule",
    "window",
    "lifecycle",
    "cold",
    "storage",
    "copy",
    "job",
    "worker",
    "schedule",
    "tag",
    "selection",
    "resource",
    "audit",
    "report",
    "retention",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "grace",
    "mark",
    "sweep",
    "dedup",
    "compress",
]


def text_bytes(rng: random.Random, size: int) -> bytes:
    """Compressible, text-like bytes of about size."""
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word + ("\n" if rng.random() < 0.1 else " "))
        length += len(word) + 1
    return "".join(words).encode()[:size]


def write_file(path: Path, data: bytes) -> None:
    """Create parents and write data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_tree(
    root: Path,
    seed: int,
    *,
    small_files: int = 200,
    big_files: int = 3,
    big_size: tuple[int, int] = (2 * MIB + 200 * KIB, 3 * MIB),
    text_size: int = 600 * KIB,
) -> None:
    """A source tree: small random and text files in nested dirs, a few big random files, a log."""
    rng = random.Random(seed)
    for number in range(small_files):
        directory = root / f"dir{number % 7}" / f"sub{number % 3}"
        if number % 2:
            write_file(directory / f"note{number:03d}.txt", text_bytes(rng, rng.randint(10, 20 * KIB)))
        else:
            write_file(directory / f"blob{number:03d}.dat", rng.randbytes(rng.randint(1, 40 * KIB)))
    for number in range(big_files):
        write_file(root / "big" / f"big{number}.bin", rng.randbytes(rng.randint(*big_size)))
    write_file(root / "logs" / "app.log", text_bytes(rng, text_size))
    write_file(root / "empty.txt", b"")
    (root / "emptydir").mkdir(parents=True, exist_ok=True)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and a marker for directories and symlinks)."""
    digest: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in dirnames:
            path = base / name
            relative = path.relative_to(root).as_posix()
            digest[relative] = f"link:{os.readlink(path)}" if path.is_symlink() else "dir"
        for name in filenames:
            path = base / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest[relative] = f"link:{os.readlink(path)}"
            else:
                digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def restore_and_compare(
    repo: Path, snapshot_id: str, expected: Mapping[str, str], target: Path, root_name: str
) -> None:
    """Restore a snapshot with the CLI and assert the files are byte-identical to expected."""
    if target.exists():
        shutil.rmtree(target)
    result = ok(run_cli("restore", snapshot_id, "--target", target, repo=repo))
    restored = tree_digest(target / root_name)
    missing = sorted(set(expected) - set(restored))
    extra = sorted(set(restored) - set(expected))
    different = sorted(path for path in set(expected) & set(restored) if expected[path] != restored[path])
    assert not (missing or extra or different), (
        f"restore of {snapshot_id[:8]} differs: missing {missing[:5]}, extra {extra[:5]}, "
        f"different {different[:5]}\n{result.describe()}"
    )


def directory_listing(path: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry below (and including) path: relative name -> (kind, size, mtime_ns)."""
    listing: dict[str, tuple[str, int, int]] = {}
    if not path.exists() and not path.is_symlink():
        return listing
    stat = path.lstat()
    listing["."] = ("dir" if path.is_dir() else "file", stat.st_size, stat.st_mtime_ns)
    if not path.is_dir():
        return listing
    for directory, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            entry = Path(directory) / name
            stat = entry.lstat()
            kind = "dir" if entry.is_dir() and not entry.is_symlink() else "file"
            listing[entry.relative_to(path).as_posix()] = (kind, stat.st_size, stat.st_mtime_ns)
    return listing
