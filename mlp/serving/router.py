"""Traffic split between a model's versions: stable, canary, A/B and shadow.

Without a sticky key the split uses smooth weighted round-robin, so over any 100
consecutive requests the share of each version is exact (within one request) rather
than merely right on average. With a sticky key (the A/B header) the version is a pure
function of the key's hash, so a key always lands on the same version while the
weights stay the same. Shadow traffic is chosen the same way, by a running credit.

The router is plain data plus two small counters; it is swapped whole when a
deployment changes, never mutated in place across versions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLIT_ROLES = ("stable", "canary", "ab")


@dataclass(frozen=True)
class Route:
    version: str
    role: str
    weight: int


class Router:
    def __init__(self, routes: list[Route], sticky_header: str | None = None) -> None:
        split = [r for r in routes if r.role in SPLIT_ROLES and r.weight > 0]
        stable = [r for r in routes if r.role == "stable"]
        if len(stable) != 1:
            raise ValueError(f"exactly one stable route is required, got {len(stable)}")
        if not split:
            split = stable
        total = sum(r.weight for r in split)
        if total <= 0:
            raise ValueError("route weights sum to zero")
        self.split = split
        self.total = total
        self.stable = stable[0].version
        self.sticky_header = sticky_header.lower() if sticky_header else None
        shadows = [r for r in routes if r.role == "shadow"]
        self.shadow = shadows[0].version if shadows else None
        self.shadow_percent = shadows[0].weight if shadows else 0
        self._current = [0] * len(split)
        self._shadow_credit = 0
        # cumulative bounds on a 0..9999 scale for the sticky hash
        bounds = []
        acc = 0
        for r in split:
            acc += r.weight
            bounds.append(acc * 10000 // total)
        self._bounds = bounds
        self._single = split[0].version if len(split) == 1 else None

    def percentages(self) -> dict[str, int]:
        """The live split as {version: percent} (what this router really serves)."""
        return {r.version: r.weight * 100 // self.total for r in self.split}

    def choose(self, key: str | None = None) -> str:
        """The version that answers this request."""
        if self._single is not None:
            return self._single
        if key is not None and self.sticky_header is not None:
            bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10000
            for r, bound in zip(self.split, self._bounds, strict=True):
                if bucket < bound:
                    return r.version
            return self.split[-1].version
        # smooth weighted round-robin (as in nginx): add weights, pick the largest, subtract total
        cur = self._current
        best = 0
        for i, r in enumerate(self.split):
            cur[i] += r.weight
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return self.split[best].version

    def mirror(self) -> str | None:
        """The shadow version if this request should be mirrored to it, else None."""
        if self.shadow is None or self.shadow_percent <= 0:
            return None
        self._shadow_credit += self.shadow_percent
        if self._shadow_credit >= 100:
            self._shadow_credit -= 100
            return self.shadow
        return None
