"""Randomly damaged copies of the base repository never crash `load`, and every diagnostic is located.

Found so far (and fixed): an unbalanced '[' in a URI crashed urlsplit ("Invalid IPv6 URL"),
and a mapping used as a mapping key crashed ruamel's safe constructor (TypeError).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mlp.sources.base import Snapshot
from mlp.specs import load

pytestmark = pytest.mark.timeout(60)

BASE = Path(__file__).resolve().parent / "broken" / "base"
TOKENS = [
    b":",
    b"-",
    b" ",
    b"\n",
    b"[",
    b"]",
    b"{",
    b"}",
    b"&a ",
    b"*a",
    b"!!",
    b"'",
    b'"',
    b"#",
    b"\t",
    b"0",
    b"-1",
    b"null",
    b"---\n",
    b"? ",
    b"<<: ",
    b"\xff",
    b"%YAML 1.1\n",
    b"..",
    b"%2e",
    b"token: x",
    b"AKIAIOSFODNN7EXAMPLE",
]


def damage(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, pos = rng.random(), rng.randrange(len(buf) + 1)
        if op < 0.45:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op < 0.75:
            del buf[pos : pos + rng.randint(1, 8)]
        else:
            lines = bytes(buf).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            buf = bytearray(b"\n".join(lines))
    return bytes(buf)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_damaged_repositories_never_crash(seed: int) -> None:
    files = {p.relative_to(BASE).as_posix(): p.read_bytes() for p in BASE.rglob("*.yaml")}
    rng = random.Random(seed)
    invalid = 0
    for _ in range(300):
        broken = dict(files)
        path = rng.choice(sorted(broken))
        broken[path] = damage(broken[path], rng)
        result = load(Snapshot(revision="fuzz", files=broken))
        invalid += not result.ok
        for d in result.diagnostics:
            assert d.path in broken, d
            assert 1 <= d.line <= broken[d.path].count(b"\n") + 1, d
            assert d.col >= 1, d
            assert str(d).startswith(f"{d.path}:{d.line}:{d.col}: ")
    assert invalid > 150  # the damage is real: most copies are invalid
