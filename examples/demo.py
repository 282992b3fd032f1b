"""`make demo`: the repository engine end to end through the real CLI.

Builds a small sample tree, initialises a repository under .demo/repo-demo/, backs the tree up,
changes it, backs it up again (only the change is stored), restores the first snapshot,
verifies every byte against the original, and runs a full data check.
"""

from __future__ import annotations

import filecmp
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo" / "repo-demo"  # apart from the server demo's state in .demo/
DATASET = ROOT.parent / "shared" / "bench" / "gen_dataset.py"


def run(*args: str, env: dict[str, str], echo: bool = True) -> str:
    """Run the backvault CLI, echoing the command and its output."""
    if echo:
        print(f"$ backvault {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "backvault.cli.main", *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )
    if echo:
        sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: backvault {args[0]} {args[1]} exited with {result.returncode}")
    return result.stdout


def make_sample(source: Path) -> None:
    """A small mixed tree: the shared benchmark generator when present, else a few files."""
    if DATASET.exists():
        subprocess.run([sys.executable, str(DATASET), "create", str(source), "--size-mb", "48"], check=True)
    else:
        (source / "docs").mkdir(parents=True)
        (source / "docs" / "notes.txt").write_text("backvault demo\n" * 1000)
        (source / "blob.bin").write_bytes(os.urandom(3 << 20))
    (source / "link").symlink_to("docs")


def same_tree(left: Path, right: Path) -> bool:
    """True when both trees hold the same names and bytes."""
    comparison = filecmp.dircmp(left, right)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(left / name, right / name) for name in comparison.common_dirs)


def main() -> None:
    """Run the demo from scratch (a second run starts over)."""
    shutil.rmtree(DEMO, ignore_errors=True)
    source, restored, first_copy = DEMO / "source", DEMO / "restored", DEMO / "source-day1"
    DEMO.mkdir()
    make_sample(source)
    shutil.copytree(source, first_copy, symlinks=True)
    env = dict(
        os.environ, BACKVAULT_PASSWORD=secrets.token_urlsafe(24), BACKVAULT_REPOSITORY=str(DEMO / "repo")
    )
    run("repo", "init", env=env)
    run("repo", "backup", str(source), "--tag", "demo", env=env)
    if DATASET.exists():
        subprocess.run([sys.executable, str(DATASET), "mutate", str(source)], check=True)
    run("repo", "backup", str(source), "--tag", "demo", env=env)
    run("repo", "snapshots", env=env)
    first = json.loads(run("repo", "snapshots", "--json", env=env, echo=False))[0]["id"][:8]
    run("repo", "restore", first, "--target", str(restored), env=env)
    restored_tree = restored / source.name
    if not same_tree(first_copy, restored_tree):
        raise SystemExit("demo failed: the restored tree differs from the original")
    print(f"verified: snapshot {first} restored byte-identically to {restored_tree}")
    run("repo", "check", "--read-data", env=env)
    run("repo", "stats", env=env)
    print("demo complete: repository at .demo/repo-demo/repo")


if __name__ == "__main__":
    main()
