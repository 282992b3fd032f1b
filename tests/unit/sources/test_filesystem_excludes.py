"""Exclude patterns: restic-style globs on raw byte paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from filesystem_helpers import new_repository

from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.excludes import ExcludeMatcher, PatternError
from backvault.sources.filesystem.listing import walk_snapshot

ROOT = b"/home/alice"


def excluded(patterns: list[str | bytes], path: bytes) -> bool:
    """Ask a matcher about an absolute path below ROOT."""
    matcher = ExcludeMatcher(patterns)
    return matcher.excluded(path.rsplit(b"/", 1)[1], path, path[len(ROOT) :])


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.o", b"/home/alice/src/main.o", True),
        ("*.o", b"/home/alice/src/main.c", False),
        ("*.o", b"/home/alice/main.o.txt", False),
        ("cache", b"/home/alice/a/b/cache", True),
        ("cache", b"/home/alice/a/b/cached", False),
        ("ca?he", b"/home/alice/cache", True),
        ("ca?he", b"/home/alice/caache", False),
        ("[abc].txt", b"/home/alice/b.txt", True),
        ("[!abc].txt", b"/home/alice/b.txt", False),
        ("[^abc].txt", b"/home/alice/d.txt", True),
        ("[a-c]x", b"/home/alice/bx", True),
        ("[a-c]x", b"/home/alice/dx", False),
        ("build/out", b"/home/alice/project/build/out", True),
        ("build/out", b"/home/alice/project/build/other/out", False),
        ("build/**/out", b"/home/alice/project/build/x/y/out", True),
        ("build/**/out", b"/home/alice/project/build/out", True),
        ("/home/alice/tmp", b"/home/alice/tmp", True),
        ("/home/alice/tmp", b"/home/alice/x/tmp", False),
        ("/tmp", b"/home/alice/tmp", True),  # anchored at the backup root
        ("/tmp", b"/home/alice/x/tmp", False),
        ("/*/secret", b"/home/alice/x/secret", True),
        ("/*/secret", b"/home/alice/x/y/secret", False),
        ("/**/secret", b"/home/alice/x/y/secret", True),
        ("*", b"/home/alice/anything", True),
        ("a\\*b", b"/home/alice/a*b", True),
        ("a\\*b", b"/home/alice/axb", False),
        ("*.log", b"/home/alice/line\nbreak.log", True),
        (b"\xe9*", b"/home/alice/\xe9t\xe9", True),
        ("*t*", b"/home/alice/\xe9t\xe9", True),
        ("trailing/", b"/home/alice/trailing", True),
    ],
)
def test_pattern_matching(pattern: str | bytes, path: bytes, expected: bool) -> None:
    assert excluded([pattern], path) is expected


def test_star_never_crosses_a_separator() -> None:
    assert not excluded(["/a*b"], b"/home/alice/a/b")
    assert not excluded(["/a[!x]b"], b"/home/alice/a/b")


def test_several_patterns_combine() -> None:
    matcher = ExcludeMatcher(["*.tmp", "/data/cache"])
    assert matcher.needs_paths
    assert matcher.excluded(b"x.tmp", b"/r/x.tmp", b"/x.tmp")
    assert matcher.excluded(b"cache", b"/r/data/cache", b"/data/cache")
    assert not matcher.excluded(b"keep", b"/r/data/keep", b"/data/keep")
    assert not ExcludeMatcher(["*.tmp"]).needs_paths
    assert not ExcludeMatcher([])


@pytest.mark.parametrize("pattern", ["[abc", "[z-a]", "/", ""])
def test_bad_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(PatternError):
        ExcludeMatcher([pattern])


def test_backup_skips_excluded_entries_and_whole_subtrees(tmp_path: Path) -> None:
    repo = new_repository(str(tmp_path / "repo"))
    source = tmp_path / "src"
    (source / "cache" / "deep").mkdir(parents=True)
    (source / "cache" / "deep" / "file").write_bytes(b"cached")
    (source / "keep" / "cache").mkdir(parents=True)
    (source / "keep" / "main.o").write_bytes(b"object")
    (source / "keep" / "main.c").write_bytes(b"source")
    (source / "logs").mkdir()
    (source / "logs" / "today.log").write_bytes(b"log")
    snapshot = backup_paths(repo, [str(source)], excludes=["*.o", "/cache", f"{source}/logs/*.log"])
    listed = [path for path, _ in walk_snapshot(repo, snapshot)]
    # "/cache" is anchored: the nested keep/cache stays.
    assert listed == ["/src", "/src/keep", "/src/keep/cache", "/src/keep/main.c", "/src/logs"]
    assert not snapshot.partial
