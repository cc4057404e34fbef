"""Traffic split at the router level: exact canary share, sticky A/B keys, shadow percent."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from mlp.serving.router import Route, Router


@pytest.mark.parametrize("canary", [1, 10, 20, 33, 50])
def test_canary_split_over_10000_requests_is_within_one_point(canary: int) -> None:
    router = Router([Route("1", "stable", 100 - canary), Route("2", "canary", canary)])
    counts = Counter(router.choose() for _ in range(10_000))
    share = 100 * counts["2"] / 10_000
    assert abs(share - canary) <= 1.0, counts
    # smooth weighted round-robin is exact over whole cycles, not only on average
    assert counts["2"] == canary * 100


def test_sticky_keys_always_get_the_same_version_and_split_by_share() -> None:
    router = Router([Route("1", "stable", 70), Route("3", "ab", 30)], sticky_header="X-MLP-Key")
    assert router.sticky_header == "x-mlp-key"
    keys = [uuid.uuid4().hex for _ in range(5000)]
    first = {k: router.choose(k) for k in keys}
    for _ in range(3):
        for k in keys:
            assert router.choose(k) == first[k]
    # a fresh router (a restart, another replica) assigns the same keys the same way
    again = Router([Route("1", "stable", 70), Route("3", "ab", 30)], sticky_header="x-mlp-key")
    assert all(again.choose(k) == v for k, v in first.items())
    share = 100 * sum(v == "3" for v in first.values()) / len(keys)
    assert 26 <= share <= 34  # hash split: right share on average (5000 keys, ~4.8 sigma band)


def test_without_a_key_sticky_router_still_splits_by_weight() -> None:
    router = Router([Route("1", "stable", 50), Route("2", "ab", 50)], sticky_header="x-mlp-key")
    counts = Counter(router.choose(None) for _ in range(1000))
    assert counts == {"1": 500, "2": 500}


def test_shadow_mirrors_the_declared_percent_and_never_answers() -> None:
    router = Router([Route("1", "stable", 100), Route("2", "shadow", 25)])
    chosen = Counter(router.choose() for _ in range(1000))
    mirrored = sum(router.mirror() == "2" for _ in range(1000))
    assert chosen == {"1": 1000}
    assert mirrored == 250


def test_zero_weight_canary_gets_nothing_and_one_stable_is_required() -> None:
    router = Router([Route("1", "stable", 100), Route("2", "canary", 0)])
    assert {router.choose() for _ in range(100)} == {"1"}
    with pytest.raises(ValueError, match="exactly one stable"):
        Router([Route("1", "canary", 100)])
