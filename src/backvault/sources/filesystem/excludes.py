"""Exclude patterns in the style of restic's ``--exclude``, matched on raw byte paths.

Syntax: ``*`` matches any run of bytes inside one path component, ``?`` one byte,
``[...]`` a byte class (``[!...]`` or ``[^...]`` negated), ``\\`` escapes the next
byte, and a component that is exactly ``**`` matches any number of components
(including none).

- A pattern that does not start with ``/`` may match anywhere: ``*.o`` excludes
  every name ending in ``.o`` at any depth, ``cache/tmp`` every ``tmp`` inside a
  directory called ``cache``.
- A pattern starting with ``/`` is anchored. It matches the absolute path (as restic
  does) or the path below the backup root it was given for, so with the root
  ``/home/alice`` both ``/home/alice/cache`` and ``/cache`` exclude the same
  directory.
- A matching directory is skipped with its whole subtree, because the walk never
  descends into it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SPECIAL = frozenset(b"*?[\\")


class PatternError(ValueError):
    """An exclude pattern cannot be parsed."""


def _translate_class(pattern: bytes, start: int) -> tuple[bytes, int]:
    """Translate the class starting after '[' at start; return (regex, index after ']')."""
    index = start
    negate = index < len(pattern) and pattern[index] in b"!^"
    if negate:
        index += 1
    members = bytearray()
    first = True
    while index < len(pattern):
        byte = pattern[index]
        if byte == ord("]") and not first:
            break
        first = False
        if byte == ord("\\") and index + 1 < len(pattern):
            index += 1
            byte = pattern[index]
        if index + 2 < len(pattern) and pattern[index + 1] == ord("-") and pattern[index + 2] != ord("]"):
            high = pattern[index + 2]
            if high < byte:
                raise PatternError(f"bad range in pattern {pattern!r}")
            members += re.escape(bytes([byte])) + b"-" + re.escape(bytes([high]))
            index += 3
            continue
        members += re.escape(bytes([byte]))
        index += 1
    else:
        raise PatternError(f"unterminated '[' in pattern {pattern!r}")
    # Components never contain '/', so only a negated class could match one: exclude it.
    return b"[" + (b"^/" if negate else b"") + bytes(members) + b"]", index + 1


def _translate_component(component: bytes) -> bytes:
    """Translate one glob component (no '/') into a regex fragment."""
    out = bytearray()
    index = 0
    while index < len(component):
        byte = component[index]
        if byte == ord("*"):
            while index < len(component) and component[index] == ord("*"):
                index += 1
            out += b"[^/]*"
            continue
        if byte == ord("?"):
            out += b"[^/]"
        elif byte == ord("["):
            fragment, index = _translate_class(component, index + 1)
            out += fragment
            continue
        elif byte == ord("\\") and index + 1 < len(component):
            index += 1
            out += re.escape(component[index : index + 1])
        else:
            out += re.escape(bytes([byte]))
        index += 1
    return bytes(out)


def _translate(pattern: bytes) -> bytes:
    """Translate a whole pattern into a regex matching complete '/'-prefixed paths."""
    anchored = pattern.startswith(b"/")
    components = [part for part in pattern.split(b"/") if part]
    if not components:
        raise PatternError(f"empty exclude pattern {pattern!r}")
    if not anchored:
        components.insert(0, b"**")
    out = bytearray()
    for component in components:
        if component == b"**":
            out += b"(?:/[^/]*)*"
        else:
            out += b"/" + _translate_component(component)
    return bytes(out)


class ExcludeMatcher:
    """A compiled set of exclude patterns."""

    def __init__(self, patterns: Iterable[str | bytes]) -> None:
        self.patterns = [
            p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape") for p in patterns
        ]
        self._name_only: re.Pattern[bytes] | None = None
        self._full: re.Pattern[bytes] | None = None
        name_parts: list[bytes] = []
        full_parts: list[bytes] = []
        for pattern in self.patterns:
            regex = _translate(pattern)
            stripped = pattern.strip(b"/")
            if not pattern.startswith(b"/") and b"/" not in stripped and stripped != b"**":
                # The common case ("*.tmp", "node_modules") needs only the name, not a path.
                name_parts.append(_translate_component(stripped))
            else:
                full_parts.append(regex)
        if name_parts:
            self._name_only = re.compile(b"(?:" + b"|".join(name_parts) + b")\\Z", re.DOTALL)
        if full_parts:
            self._full = re.compile(b"(?:" + b"|".join(full_parts) + b")\\Z", re.DOTALL)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    @property
    def needs_paths(self) -> bool:
        """Tell whether some pattern looks at more than the name, so callers must build paths."""
        return self._full is not None

    def excluded(self, name: bytes, path: bytes = b"", relative: bytes = b"") -> bool:
        """Tell whether the entry called name, at absolute path and root-relative path, is excluded."""
        if self._name_only is not None and self._name_only.match(name):
            return True
        if self._full is None:
            return False
        if self._full.match(path):
            return True
        return bool(relative) and self._full.match(relative) is not None
