"""YAML reading: the fast path gives exactly what ruamel's safe loader gives, and hostile input is refused."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from mlp.sources.base import MAX_SPEC_BYTES, Snapshot
from mlp.specs import load
from mlp.specs.yamlio import MAX_DEPTH, ParseError, _depth_bound, _fast_load_all, parse

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

SCALARS = [
    "a: 1",
    "a: -0",
    "a: +7",
    "a: 010",
    "a: 0o17",
    "a: 0x1F",
    "a: 0b101",
    "a: 1_000",
    "a: 1.5",
    "a: -2.",
    "a: 1e3",
    "a: 1.0e-3",
    "a: .5",
    "a: .inf",
    "a: -.Inf",
    "a: true",
    "a: False",
    "a: TRUE",
    "a: yes",
    "a: no",
    "a: on",
    "a: ~",
    "a: null",
    "a: Null",
    "a:",
    "a: ''",
    "a: '1'",
    'a: "true"',
    "a: 2024-01-31",
    "a: 2024-01-31T10:00:00Z",
    "a: !!str 1",
    "a: !!int '3'",
    "a: !!float 1",
    "a: s3://bucket/key",
    "a: 'x: y'",
    "a: [1, two, 3.0, null]",
    "a: {b: {c: [d]}}",
    "a: |\n  line\n  two\n",
    "a: >\n  folded\n  text\n",
    "? [1, 2]\n: x",
    "1: one\n2: two",
    "true: t",
    "null: n",
    "1.5: f",
    "a: &x [1]\nb: *x",
    "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2",
    "%YAML 1.1\n---\na: yes",
    "a: 1\n---\nb: 2\n---\n",
    "--- x",
    "- a\n- b",
    "a: 1\na: 2",
    "a: !custom x",
    "a: !!set {x, y}",
    "a: !!binary aGVsbG8=",
    "a: 12:30",
    "a: 1:20:30",
    "a: 'it''s'",
    'a: "\\t\\u00e9"',
]


# ruamel turns a list key into a tuple; no spec field can use one, so mlp says where it is
REFUSED_ON_PURPOSE = {"? [1, 2]\n: x"}


def _stock(text: str) -> list[Any]:
    return list(YAML(typ="safe", pure=False).load_all(text))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("text", SCALARS)
def test_fast_path_matches_ruamel_safe_loader(text: str) -> None:
    try:
        expected: Any = _stock(text)
    except Exception as exc:  # the fast path must then also fail (or defer to the stock loader)
        expected = type(exc)
    try:
        got: Any = parse(text.encode())
    except ParseError:
        got = "ParseError"
    if text in REFUSED_ON_PURPOSE:
        assert got == "ParseError", (text, got)
    elif isinstance(expected, type):
        assert got == "ParseError" or _fast_load_all(text) is None, (text, got)
    elif all(d is None for d in expected):
        assert got == "ParseError"  # an empty file is refused
    else:
        assert _same(got, expected), (text, got, expected)


def test_fast_path_matches_on_every_spec_of_the_example_repositories() -> None:
    paths = [
        p
        for top in ("specs", "environments")
        for base in (ROOT, ROOT / "tests" / "broken" / "base")
        for p in (base / top).rglob("*.yaml")
    ]
    assert len(paths) >= 10
    for path in paths:
        text = path.read_text(encoding="utf-8")
        fast = _fast_load_all(text)
        assert fast is not None, f"{path} should take the fast path"
        assert _same(fast, _stock(text)), path


def test_fast_path_defers_on_anchors_tags_and_duplicates() -> None:
    assert _fast_load_all("a: &x 1\nb: *x\n") is None
    assert _fast_load_all("a: !!str 1\n") is None
    assert _fast_load_all("a: 2024-01-31\n") is None
    assert _fast_load_all("a: 1\na: 2\n") is None
    assert _fast_load_all("a: 1\nb: [x, {c: 2.5}]\n") == [{"a": 1, "b": ["x", {"c": 2.5}]}]


def test_tab_message() -> None:
    with pytest.raises(ParseError) as info:
        parse(b"a:\n\tb: 1\n")
    assert "tabs are not allowed" in info.value.message
    assert (info.value.line, info.value.col) == (2, 1)


def test_depth_bound_is_low_for_ordinary_specs_and_an_upper_bound() -> None:
    for path in (ROOT / "specs").rglob("*.yaml"):
        assert _depth_bound(path.read_text(encoding="utf-8")) <= MAX_DEPTH, path
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v\n"
    assert _depth_bound(block) > MAX_DEPTH
    assert _depth_bound("a: " + "[" * 70 + "]" * 70) > MAX_DEPTH
    assert _depth_bound("a: 'unbalanced ['\n") > MAX_DEPTH  # unknown: the exact check runs, and passes
    assert parse(b"a: 'unbalanced ['\n") == [{"a": "unbalanced ["}]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", 1),  # segfaulted the C composer before the guard
        ("- " * 5_000 + "x\n", 1),
        ("a:\n" + "".join(f"{'  ' * (i + 1)}- k{i}:\n" for i in range(40)), 33),  # depth 65: the mapping of k31
    ],
)
def test_deep_nesting_is_refused_with_its_line(text: str, line: int) -> None:
    start = time.process_time()
    with pytest.raises(ParseError) as info:
        parse(text.encode())
    assert f"nesting deeper than {MAX_DEPTH}" in info.value.message
    assert info.value.line == line
    assert time.process_time() - start < 1


def test_alias_bombs_are_refused_fast() -> None:
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.process_time()
    with pytest.raises(ParseError, match="alias bomb"):
        parse("\n".join(laughs).encode())
    assert time.process_time() - start < 1
    # a recursive alias is not a bomb and must not loop
    assert parse(b"a: &a [1, *a]\n")


def test_oversized_bytes_in_a_snapshot_are_refused_unparsed() -> None:
    """Sources list oversized files unread; a snapshot built another way is still bounded."""
    big = (
        b"apiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: t}\nspec: {members: [{user: u}]}\n# "
        + b"x" * MAX_SPEC_BYTES
        + b"\n"
    )
    start = time.process_time()
    result = load(Snapshot(revision="r", files={"specs/big.yaml": big}))
    assert time.process_time() - start < 1
    assert [(d.path, d.line, "file too large" in d.message) for d in result.diagnostics] == [
        ("specs/big.yaml", 1, True)
    ]
