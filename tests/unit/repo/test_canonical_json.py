"""canonical_json must write exactly the standard library's bytes and read exactly its values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backvault.repo import canonical_json
from backvault.repo.tree import Node, Tree

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=12)
    | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12)
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _stdlib(document: Any, sort_keys: bool) -> bytes:
    return json.dumps(document, sort_keys=sort_keys, separators=(",", ":")).encode("ascii")


@settings(max_examples=400, deadline=None)
@given(_DOCUMENTS, st.booleans())
def test_dumps_writes_the_standard_librarys_bytes(document: Any, sort_keys: bool) -> None:
    assert canonical_json.dumps(document, sort_keys=sort_keys) == _stdlib(document, sort_keys)


@settings(max_examples=400, deadline=None)
@given(_DOCUMENTS)
def test_loads_reads_the_standard_librarys_values(document: Any) -> None:
    data = _stdlib(document, sort_keys=False)
    parsed = canonical_json.loads(data)
    assert parsed == json.loads(data)
    assert json.dumps(parsed) == json.dumps(document)  # same types too: no int became a float


def test_every_ascii_character_and_the_integer_limits() -> None:
    for code in range(128):
        document = {"name": f"a{chr(code)}b"}
        assert canonical_json.dumps(document, sort_keys=True) == _stdlib(document, True), code
    for number in (2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, -(10**19)):
        data = canonical_json.dumps({"n": number})
        assert data == _stdlib({"n": number}, False)
        parsed = canonical_json.loads(data)["n"]
        assert type(parsed) is int and parsed == number


def test_a_tree_with_awkward_names_keeps_its_bytes_and_round_trips() -> None:
    names = [b"plain.txt", "caf\u00e9".encode(), b"new\nline", b'quote"back\\slash', b"\xff\xfe", b"del\x7f"]
    big = {"mtime_ns": 2**64 + 5, "inode": 2**64 - 1}
    tree = Tree([Node(name=name, type="file", content=["ab" * 32], **big) for name in names])
    document = {"nodes": [node.to_json() for node in sorted(tree.nodes, key=lambda node: node.name)]}
    data = tree.serialize()
    assert data == _stdlib(document, True)
    assert Tree.deserialize(data).nodes == sorted(tree.nodes, key=lambda node: node.name)
