"""Compare backvault with restic and borg on the same generated data set, in one run.

Steps, each tool in turn on the same source directory: first backup, no-change
backup, `gen_dataset.py mutate` then an incremental backup, full restore of the
latest snapshot (verified against the source, outside the timing), repository
size on disk, and the peak RSS of every backup/restore process.

Every step runs in several rounds (--rounds, default 3), each round with its own
repositories and caches, and the tools take turns going first: on a shared VM the
speed of the machine drifts by a third within minutes, and whoever runs first after a
pause pays for memory the host took back (docs/benchmarks.md, "Noise"). The table
shows each tool's median over the rounds; every single measurement is printed below it
and written to the JSON file.

Usage:
  .venv/bin/python bench/compare_engines.py [--size-mb 1024] [--tools backvault,restic,borg]
                                            [--rounds 3] [--workdir bench/work]
                                            [--json results.json]

The page cache is NOT dropped (that needs privileges): the data set has just been
written and fits in RAM, so every tool reads it warm, in the same step order.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_DATASET = REPO_ROOT.parent / "shared" / "bench" / "gen_dataset.py"
ALL_TOOLS = ("backvault", "restic", "borg")
PASSWORD = "bench-passphrase"
MIB = 1024 * 1024
BORG_COMPRESSION = "zstd,3"
# Variables that would change how a tool behaves (a test-only fast KDF, another
# repository, a user's cache): removed so every run measures the defaults.
SCRUBBED_PREFIXES = ("BACKVAULT_", "RESTIC_", "BORG_")

STEP_INIT = "init"
STEP_FIRST = "first backup"
STEP_NO_CHANGE = "no-change backup"
STEP_INCREMENTAL = "incremental backup"
STEP_RESTORE = "restore"
TIMED_STEPS = (STEP_FIRST, STEP_NO_CHANGE, STEP_INCREMENTAL, STEP_RESTORE)


@dataclass(frozen=True)
class Command:
    """One tool invocation: argument vector and working directory."""

    argv: list[str]
    cwd: Path | None = None


@dataclass
class Measurement:
    """What one child process cost: wall and CPU time, peak RSS and its exit code."""

    seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    returncode: int
    # 1-minute load average just before the step: other work on the machine skews wall times.
    load_before: float = 0.0


@dataclass
class ToolResult:
    """Everything measured for one tool."""

    version: str
    # One entry per round, in round order.
    steps: dict[str, list[Measurement]] = field(default_factory=dict)
    repo_bytes: dict[str, list[int]] = field(default_factory=dict)
    cache_bytes: dict[str, list[int]] = field(default_factory=dict)  # the local cache, not in repo_bytes
    restore_verified: bool | None = None
    failure: str | None = None


# ---------------------------------------------------------------------------
# The three tools


class Engine:
    """How to drive one backup tool; subclasses give the command lines."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.repo = workdir / "repos" / self.name
        # Local caches (files cache, index cache) go here, so each run starts without them
        # and their size can be reported next to the repository's.
        self.cache = workdir / "cache" / self.name

    def environment(self) -> dict[str, str]:
        """The parent's environment without anything that changes the tool's behaviour."""
        return {key: value for key, value in os.environ.items() if not key.startswith(SCRUBBED_PREFIXES)}

    def version(self) -> str:
        """The tool's version string."""
        raise NotImplementedError

    def init(self) -> Command:
        """Create an empty repository at self.repo."""
        raise NotImplementedError

    def backup(self, source: Path, number: int) -> Command:
        """Back up source as the number-th snapshot."""
        raise NotImplementedError

    def restore(self, target: Path) -> Command:
        """Restore the latest snapshot into the (empty) target directory."""
        raise NotImplementedError

    def restored_root(self, target: Path, source: Path) -> Path:
        """Where, under target, the restore put the source directory."""
        # restic and borg recreate the absolute path below the target.
        return target / source.relative_to(source.anchor)


class Backvault(Engine):
    """backvault's own CLI, from the same virtualenv as this script."""

    name = "backvault"

    def executable(self) -> str:
        """The console script next to the running interpreter, else the one on PATH."""
        beside = Path(sys.executable).parent / "backvault"
        return str(beside) if beside.exists() else shutil.which("backvault") or "backvault"

    def environment(self) -> dict[str, str]:
        """Real KDF (BACKVAULT_TEST_FAST_KDF is scrubbed); the local cache lives in the workdir."""
        return {
            **super().environment(),
            "BACKVAULT_PASSWORD": PASSWORD,
            "BACKVAULT_CACHE_DIR": str(self.cache),
        }

    def version(self) -> str:
        """The installed distribution's version."""
        try:
            return importlib.metadata.version("backvault")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def init(self) -> Command:
        """`backvault repo init`."""
        return Command([self.executable(), "repo", "init", "--repo", str(self.repo)])

    def backup(self, source: Path, number: int) -> Command:
        """`backvault repo backup` (the parent snapshot is found automatically)."""
        return Command(
            [self.executable(), "repo", "backup", str(source), "--repo", str(self.repo), "--quiet"]
        )

    def restore(self, target: Path) -> Command:
        """`backvault repo restore latest`."""
        argv = [self.executable(), "repo", "restore", "latest", "--target", str(target)]
        return Command([*argv, "--repo", str(self.repo), "--quiet"])

    def restored_root(self, target: Path, source: Path) -> Path:
        """backvault names each backed-up path by its basename (like `restic` roots in `ls`)."""
        return target / source.name


class Restic(Engine):
    """restic with its default compression ('auto') and a cache inside the workdir."""

    name = "restic"

    def base(self) -> list[str]:
        """Common arguments; the cache lives in the workdir so each run starts cold-cache-free."""
        return ["restic", "--repo", str(self.repo), "--cache-dir", str(self.cache)]

    def environment(self) -> dict[str, str]:
        """Passphrase from the environment."""
        return {**super().environment(), "RESTIC_PASSWORD": PASSWORD}

    def version(self) -> str:
        """`restic version`."""
        return _first_line(["restic", "version"])

    def init(self) -> Command:
        """`restic init` (repository format 'stable', v2 with compression, on 0.14)."""
        return Command([*self.base(), "init"])

    def backup(self, source: Path, number: int) -> Command:
        """`restic backup` (parent found by host and paths); --quiet like backvault's."""
        return Command([*self.base(), "backup", "--quiet", str(source)])

    def restore(self, target: Path) -> Command:
        """`restic restore latest --target`."""
        return Command([*self.base(), "restore", "latest", "--target", str(target)])


class Borg(Engine):
    """borg 1.2 with repokey-blake2 encryption and zstd level 3 compression."""

    name = "borg"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.last_archive = ""

    def environment(self) -> dict[str, str]:
        """Passphrase, and BORG_BASE_DIR in the workdir so the files cache and keys start empty."""
        return {
            **super().environment(),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.cache),
            "BORG_DISPLAY_PASSPHRASE": "no",
        }

    def version(self) -> str:
        """`borg --version`."""
        return _first_line(["borg", "--version"])

    def init(self) -> Command:
        """`borg init --encryption=repokey-blake2`."""
        return Command(["borg", "init", "--encryption=repokey-blake2", str(self.repo)])

    def backup(self, source: Path, number: int) -> Command:
        """`borg create --compression zstd,3 REPO::snapshot-N DIR`."""
        self.last_archive = f"snapshot-{number}"
        archive = f"{self.repo}::{self.last_archive}"
        return Command(["borg", "create", "--compression", BORG_COMPRESSION, archive, str(source)])

    def restore(self, target: Path) -> Command:
        """`borg extract` of the newest archive, run inside the target (borg extracts into cwd)."""
        return Command(["borg", "extract", f"{self.repo}::{self.last_archive}"], cwd=target)


ENGINES: dict[str, Callable[[Path], Engine]] = {"backvault": Backvault, "restic": Restic, "borg": Borg}


def source_fingerprint() -> str:
    """Which backvault code is measured: the commit plus a hash of its data path as on disk."""
    digest = hashlib.sha256()
    # Only the packages `backvault repo` runs: edits to the control plane do not change these numbers.
    packages = [REPO_ROOT / "src" / "backvault" / name for name in ("cli", "repo", "sources", "storage")]
    for path in sorted(path for package in packages for path in package.rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    return f"commit {commit}, data-path sha256 {digest.hexdigest()[:12]}"


def compile_backvault() -> None:
    """Write backvault's bytecode, as installing a package does.

    This checkout is installed in editable mode, and with PYTHONDONTWRITEBYTECODE set (as in
    some shells and CI) every command would compile each of its modules again: ~40 ms per
    command, and again in every restore worker.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "src" / "backvault")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _first_line(argv: list[str]) -> str:
    """First line of a command's output, or 'unavailable'."""
    try:
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"
    return output.strip().splitlines()[0] if output.strip() else "unknown"


# ---------------------------------------------------------------------------
# Measuring


def run_measured(command: Command, environment: dict[str, str], log: Path) -> Measurement:
    """Run a command with output to log; wall time by perf_counter, CPU and peak RSS by wait4."""
    # Untimed: what the previous step left to write back (and the discards of what the run
    # deleted) is flushed now, not during the next tool's timed step.
    os.sync()
    with log.open("ab") as log_file:
        log_file.write(f"\n$ {' '.join(command.argv)}  (cwd={command.cwd})\n".encode())
        log_file.flush()
        load = os.getloadavg()[0]
        started = time.perf_counter()
        # Output goes to a file, not a pipe: we block in wait4, so a full pipe would deadlock.
        process = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        # wait4 (not Popen.wait) returns the child's own rusage: exact peak RSS, no polling.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return Measurement(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
        returncode=process.returncode,
        load_before=load,
    )


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under path, like `du -s` (blocks, not apparent sizes)."""
    total = 0
    for directory, _, files in os.walk(path):
        total += os.lstat(directory).st_blocks * 512
        total += sum(os.lstat(os.path.join(directory, name)).st_blocks * 512 for name in files)
    return total


def file_create_probe(directory: Path, count: int = 2000) -> float:
    """Microseconds to create one small file in directory.

    Restores are dominated by creating files, and on this VM that cost drifted tenfold
    within an hour; the probe lets a slow restore be told apart from a slow filesystem.
    """
    probe = directory / "create-probe"
    probe.mkdir()
    started = time.perf_counter()
    for number in range(count):
        (probe / f"f{number}").write_bytes(b"x" * 1024)
    elapsed = time.perf_counter() - started
    shutil.rmtree(probe)
    return elapsed / count * 1e6


def tree_manifest(root: Path) -> dict[str, str]:
    """Map every entry's relative path to its kind and, for files, a SHA-256 of the contents."""
    manifest: dict[str, str] = {}
    for directory, directories, files in os.walk(root):
        relative_directory = os.path.relpath(directory, root)
        for name in directories:
            path = os.path.join(directory, name)
            kind = f"link:{os.readlink(path)}" if os.path.islink(path) else "dir"
            manifest[os.path.normpath(os.path.join(relative_directory, name))] = kind
        for name in files:
            path = os.path.join(directory, name)
            relative = os.path.normpath(os.path.join(relative_directory, name))
            manifest[relative] = f"link:{os.readlink(path)}" if os.path.islink(path) else _file_digest(path)
    return manifest


def _file_digest(path: str) -> str:
    """SHA-256 of a file's contents."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def manifest_digest(manifest: dict[str, str]) -> str:
    """One hash over the whole tree (paths, kinds and contents), for the JSON report."""
    digest = hashlib.sha256()
    for path in sorted(manifest):
        digest.update(f"{path}\0{manifest[path]}\n".encode())
    return digest.hexdigest()


def compare_manifests(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human-readable differences between two manifests (empty when equal)."""
    problems = [f"missing: {path}" for path in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected: {path}" for path in sorted(actual.keys() - expected.keys())]
    common = sorted(expected.keys() & actual.keys())
    problems += [f"differs: {path}" for path in common if expected[path] != actual[path]]
    return problems


# ---------------------------------------------------------------------------
# The run


class Bench:
    """One benchmark run: the data set, the engines and their results."""

    def __init__(
        self,
        workdir: Path,
        size_mb: int,
        tools: Sequence[str],
        *,
        rounds: int = 3,
        keep_files: bool = False,
    ) -> None:
        self.workdir = workdir
        self.size_mb = size_mb
        self.keep_files = keep_files
        self.source = workdir / "data"
        self.logs = workdir / "logs"
        # Each round has its own engines (repositories and caches), and its own order: the
        # tools take turns going first.
        self.rounds = [
            _rotated([ENGINES[name](workdir / "rounds" / str(number)) for name in tools], number)
            for number in range(rounds)
        ]
        self.results = {engine.name: ToolResult(version=engine.version()) for engine in self.rounds[0]}
        self.dataset: dict[str, float | int | str] = {}
        self.source_before = source_fingerprint()

    def prepare(self) -> None:
        """Start from an empty workdir (repositories, caches, restores and logs of older runs)."""
        for name in ("data", "repos", "rounds", "cache", "restore", "logs"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.logs.mkdir(parents=True)
        for engines in self.rounds:
            engines[0].repo.parent.mkdir(parents=True)
        compile_backvault()

    def generate(self, action: str, *extra: str) -> float:
        """Run gen_dataset.py create/mutate on the source directory; returns its wall time."""
        started = time.perf_counter()
        subprocess.run([sys.executable, str(GEN_DATASET), action, str(self.source), *extra], check=True)
        return time.perf_counter() - started

    def step(self, engine: Engine, step: str, command: Command) -> bool:
        """Measure one step of one tool; a failure stops that tool's later steps."""
        result = self.results[engine.name]
        if result.failure is not None:
            return False
        measurement = run_measured(command, engine.environment(), self.logs / f"{engine.name}.log")
        result.steps.setdefault(step, []).append(measurement)
        if measurement.returncode != 0:
            result.failure = (
                f"{step} exited with {measurement.returncode} (see {self.logs / engine.name}.log)"
            )
            print(f"  {engine.name}: FAILED: {result.failure}", file=sys.stderr)
            return False
        print(
            f"  {engine.name:10s} {step:20s} {measurement.seconds:8.2f} s  "
            f"{measurement.cpu_seconds:8.2f} s CPU  {measurement.max_rss_bytes / MIB:7.1f} MiB RSS  "
            f"(load {measurement.load_before:.2f})"
        )
        return True

    def backup_all(self, step: str, number: int, engines: list[Engine]) -> None:
        """One backup of the source with each of one round's tools, in the round's order."""
        for engine in engines:
            self.step(engine, step, engine.backup(self.source, number))

    def record_sizes(self, label: str, engines: list[Engine]) -> None:
        """Repository size on disk of one round's tools still running."""
        for engine in engines:
            result = self.results[engine.name]
            if result.failure is None:
                result.repo_bytes.setdefault(label, []).append(disk_usage(engine.repo))
                result.cache_bytes.setdefault(label, []).append(disk_usage(engine.cache))

    def restore_all(self) -> None:
        """Restore the latest snapshot of every tool and round into an empty directory, then verify it.

        The restored trees stay until the end of the run: deleting ~60k files makes the next
        restores create theirs slower (see remove_files).
        """
        print(f"{STEP_RESTORE}:")
        expected = tree_manifest(self.source)
        self.probe_filesystem("before_restore")
        self.dataset["digest"] = manifest_digest(expected)
        for number, engines in enumerate(self.rounds):
            for engine in engines:
                self.restore_one(engine, number, expected)

    def restore_one(self, engine: Engine, number: int, expected: dict[str, str]) -> None:
        """Restore one round's repository of one tool, then verify it."""
        target = self.workdir / "restore" / f"{engine.name}-{number}"
        target.mkdir(parents=True)
        if self.step(engine, STEP_RESTORE, engine.restore(target)):
            self.verify(engine, expected, engine.restored_root(target, self.source))

    def verify(self, engine: Engine, expected: dict[str, str], restored: Path) -> None:
        """Compare the restored tree with the source (file list and contents); not timed."""
        result = self.results[engine.name]
        problems = (
            compare_manifests(expected, tree_manifest(restored))
            if restored.is_dir()
            else [f"restored tree not found at {restored}"]
        )
        result.restore_verified = not problems and result.restore_verified is not False
        if problems:
            result.failure = f"restore differs from the source ({len(problems)} problems)"
            print(
                f"  {engine.name}: restore verification FAILED:",
                *problems[:10],
                sep="\n    ",
                file=sys.stderr,
            )
        else:
            print(f"  {engine.name}: restore verified ({len(expected)} entries identical)")

    def run(self) -> None:
        """All steps, each one for every tool before the next step starts."""
        self.prepare()
        self.dataset["load_average_at_start"] = os.getloadavg()[0]
        if os.getloadavg()[0] > 0.5:
            print(
                f"note: load average {os.getloadavg()[0]:.2f}: other work will skew wall times",
                file=sys.stderr,
            )
        print(f"generating {self.size_mb} MiB data set in {self.source} ...")
        self.probe_filesystem("at_start")
        self.dataset["generate_seconds"] = self.generate("create", "--size-mb", str(self.size_mb))
        self.describe_dataset("created")
        for number, engines in enumerate(self.rounds):
            print(f"round {number + 1}: {STEP_INIT}, {STEP_FIRST}, {STEP_NO_CHANGE}")
            for engine in engines:
                self.step(engine, STEP_INIT, engine.init())
            self.backup_all(STEP_FIRST, 1, engines)
            self.record_sizes("after first backup", engines)
            self.backup_all(STEP_NO_CHANGE, 2, engines)
        print("mutating the data set ...")
        self.dataset["mutate_seconds"] = self.generate("mutate")
        self.describe_dataset("mutated")
        for number, engines in enumerate(self.rounds):
            print(f"round {number + 1}: {STEP_INCREMENTAL}")
            self.backup_all(STEP_INCREMENTAL, 3, engines)
            self.record_sizes("final", engines)
        self.restore_all()
        if not self.keep_files:
            self.remove_files()

    def remove_files(self) -> None:
        """Delete the data set and the restored trees now (the repositories stay, for inspection).

        On ext4 without a journal (as on the benchmark VM), a new inode skips those deleted in
        the last 60 to 360 s: a run that starts by deleting the previous run's ~250k files then
        creates files up to 25x slower for minutes, its restores most of all. Deleted at the
        end, they leave the next run a settled filesystem if it starts a few minutes later.
        """
        for name in ("data", "restore"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)

    def probe_filesystem(self, label: str) -> None:
        """Record (and show) how fast the workdir's filesystem creates small files right now."""
        microseconds = file_create_probe(self.workdir)
        self.dataset[f"create_microseconds_per_file_{label}"] = round(microseconds, 1)
        print(f"  (filesystem: {microseconds:.0f} us to create a small file, {label.replace('_', ' ')})")

    def describe_dataset(self, label: str) -> None:
        """Record the source's file count and apparent size."""
        files = [Path(directory, name) for directory, _, names in os.walk(self.source) for name in names]
        self.dataset[f"{label}_files"] = len(files)
        self.dataset[f"{label}_bytes"] = sum(path.lstat().st_size for path in files)


# ---------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Row:
    """One table row: a label, how to read the value from a ToolResult, and an optional target."""

    label: str
    value: Callable[[ToolResult], float | None]
    target: float | None = None


def _seconds(step: str, cpu: bool = False) -> Callable[[ToolResult], float | None]:
    """The median over the rounds; None unless every round's step succeeded."""

    def read(result: ToolResult) -> float | None:
        measurements = result.steps.get(step, [])
        if result.failure is not None or not measurements:
            return None
        return statistics.median(m.cpu_seconds if cpu else m.seconds for m in measurements)

    return read


def _rss(steps: Iterable[str]) -> Callable[[ToolResult], float | None]:
    """The peak over the given steps of every round (a peak is a maximum, not a median)."""
    chosen = tuple(steps)

    def read(result: ToolResult) -> float | None:
        if result.failure is not None or not all(result.steps.get(step) for step in chosen):
            return None  # a peak over several steps only means something if all of them ran
        return max(m.max_rss_bytes for step in chosen for m in result.steps[step]) / MIB

    return read


def _size(label: str, cache: bool = False) -> Callable[[ToolResult], float | None]:
    """The median over the rounds (chunk boundaries depend on each repository's random seed)."""

    def read(result: ToolResult) -> float | None:
        sizes = (result.cache_bytes if cache else result.repo_bytes).get(label)
        return statistics.median(sizes) / MIB if sizes else None

    return read


def _rotated(engines: list[Engine], number: int) -> list[Engine]:
    """The engines in the order round `number` runs them: each round the next tool goes first."""
    shift = number % len(engines)
    return engines[shift:] + engines[:shift]


def every_round(results: dict[str, ToolResult]) -> str:
    """Each timed step's seconds per round and tool, in the order they ran within the round."""
    lines = []
    for step in TIMED_STEPS:
        cells = []
        for name, result in results.items():
            values = " ".join(f"{m.seconds:.2f}" for m in result.steps.get(step, []))
            cells.append(f"{name} {values or '-'}")
        lines.append(f"  {step:20s} " + " | ".join(cells))
    return "\n".join(lines)


# Targets from the issue: backvault divided by restic must not exceed these.
ROWS = (
    Row("first backup (s)", _seconds(STEP_FIRST), 0.5),
    Row("no-change backup (s)", _seconds(STEP_NO_CHANGE), 0.3),
    Row("incremental backup (s)", _seconds(STEP_INCREMENTAL), 0.5),
    Row("restore (s)", _seconds(STEP_RESTORE), 0.5),
    Row("repo size (MiB)", _size("final"), 1.0),
    Row("peak RSS (MiB)", _rss(TIMED_STEPS), 1.0),
    Row("init (s)", _seconds(STEP_INIT)),
    Row("repo size after 1st (MiB)", _size("after first backup")),
    Row("local cache (MiB)", _size("final", cache=True)),
    *(Row(f"{step} CPU (s)", _seconds(step, cpu=True)) for step in TIMED_STEPS),
    *(Row(f"{step} RSS (MiB)", _rss([step])) for step in TIMED_STEPS),
)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _cell(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def table(results: dict[str, ToolResult]) -> tuple[list[list[str]], list[dict[str, object]]]:
    """The printed table (header first) and the target verdicts."""
    tools = list(results)
    header = ["step", *tools, "bv/restic", "bv/borg", "target", "result"]
    rows, verdicts = [header], []
    for row in ROWS:
        values = {tool: row.value(results[tool]) for tool in tools}
        mine = values.get("backvault")
        versus_restic = _ratio(mine, values.get("restic"))
        versus_borg = _ratio(mine, values.get("borg"))
        verdict = ""
        if row.target is not None and versus_restic is not None:
            verdict = "PASS" if versus_restic <= row.target else "MISS"
            verdicts.append(
                {"metric": row.label, "ratio": versus_restic, "target": row.target, "result": verdict}
            )
        target = "" if row.target is None else f"<= {row.target:.1f}x restic"
        cells = [_cell(values[tool]) for tool in tools]
        rows.append([row.label, *cells, _cell(versus_restic, "x"), _cell(versus_borg, "x"), target, verdict])
    return rows, verdicts


def format_table(rows: list[list[str]]) -> str:
    """Markdown-style table with aligned columns (numbers right-aligned)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


def machine() -> dict[str, object]:
    """Facts about the machine for the report."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for text in cpuinfo:
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_bytes / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------
# Entry point


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=1024, help="data set size (default 1024)")
    parser.add_argument(
        "--workdir", type=Path, default=REPO_ROOT / "bench" / "work", help="scratch directory"
    )
    parser.add_argument(
        "--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of " + ",".join(ALL_TOOLS)
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each step runs, tools taking turns first (default 3)"
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers to this file")
    parser.add_argument(
        "--keep-files", action="store_true", help="keep the data set and the restored trees at the end"
    )
    arguments = parser.parse_args(argv)
    arguments.tools = [name.strip() for name in arguments.tools.split(",") if name.strip()]
    unknown = [name for name in arguments.tools if name not in ENGINES]
    if unknown or not arguments.tools:
        parser.error(
            f"--tools: unknown tool(s) {', '.join(unknown) or '(none given)'}; choose from {ALL_TOOLS}"
        )
    missing = [name for name in arguments.tools if name != "backvault" and shutil.which(name) is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (run `make system-deps`)")
    if arguments.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write JSON; non-zero exit if a tool failed."""
    arguments = parse_arguments(argv)
    bench = Bench(
        arguments.workdir.resolve(),
        arguments.size_mb,
        arguments.tools,
        rounds=arguments.rounds,
        keep_files=arguments.keep_files,
    )
    started = time.perf_counter()
    bench.run()
    rows, verdicts = table(bench.results)
    source_after = source_fingerprint()
    print()
    print(format_table(rows))
    print(f"\nmedians of {arguments.rounds} rounds; seconds of each round, in round order:")
    print(every_round(bench.results))
    print("warm page cache (not dropped); in round n, the n-th tool went first")
    for name, result in bench.results.items():
        print(f"  {name}: {result.version}" + (f"  FAILED: {result.failure}" if result.failure else ""))
    print(f"  backvault source: {bench.source_before}")
    if source_after != bench.source_before:
        # Others edit src/ concurrently: numbers from a tree that changed mid-run are not attributable.
        print(
            f"  WARNING: backvault's data path changed during the run (now {source_after}); rerun",
            file=sys.stderr,
        )
    if arguments.json is not None:
        report = {
            "size_mb": arguments.size_mb,
            "rounds": arguments.rounds,
            "workdir": str(bench.workdir),
            "machine": machine(),
            "dataset": bench.dataset,
            "borg_compression": BORG_COMPRESSION,
            "backvault_source": {"before": bench.source_before, "after": source_after},
            "results": {name: asdict(result) for name, result in bench.results.items()},
            "targets": verdicts,
            "total_seconds": time.perf_counter() - started,
        }
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"raw numbers written to {arguments.json}")
    return 1 if any(result.failure for result in bench.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
