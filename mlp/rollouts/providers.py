"""Metrics providers: what the canary and the stable version did since a step began.

- `LocalProvider` reads the embedded runtime in this process: its request counters, the
  last outputs and latencies it keeps per version, and the feedback sums. A step's window
  starts at a `mark` taken when the step begins (after a restart: when it resumes).
- `PrometheusProvider` asks Prometheus' HTTP API (`/api/v1/query`) with PromQL templates
  over the range since the step began. Prometheus being down or answering garbage gives a
  `Window` with `error` set: the rollout pauses, it never promotes on missing data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from mlp.rollouts.analysis import Sample, Window
from mlp.serving.runtime import Runtime
from mlp.specs.models import AnalysisCheck


class Provider(Protocol):
    def mark(self, model: str, versions: tuple[str, str]) -> Any: ...

    def window(
        self, model: str, stable: str, canary: str, mark: Any, seconds: float, checks: list[AnalysisCheck]
    ) -> Window: ...


@dataclass(frozen=True)
class _Mark:
    answered: int
    errors: int
    observed: int
    observed_rows: int
    feedback_count: int
    feedback_sum: float


class LocalProvider:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _now(self, model: str, version: str) -> _Mark | None:
        dep = self.runtime.models.get(model)
        vs = dep.versions.get(version) if dep is not None else None
        if vs is None:
            return None
        answered, errors = vs.metrics.counts()
        fb = self.runtime.feedback.outcomes.get((model, version))
        return _Mark(
            answered,
            errors,
            vs.metrics.observed,
            vs.metrics.observed_rows,
            fb.count if fb else 0,
            fb.total if fb else 0.0,
        )

    def mark(self, model: str, versions: tuple[str, str]) -> dict[str, _Mark | None]:
        return {v: self._now(model, v) for v in versions}

    def _sample(self, model: str, version: str, start: _Mark | None, needs: frozenset[str]) -> Sample:
        now = self._now(model, version)
        if now is None:
            return Sample()
        if start is None or now.answered < start.answered:  # (re)loaded since the mark: counters restarted
            start = _Mark(0, 0, 0, 0, 0, 0.0)
        vm = self.runtime.models[model].versions[version].metrics
        n_lat = min(now.observed - start.observed, len(vm.recent_latency)) if "lat" in needs else 0
        n_out = min(now.observed_rows - start.observed_rows, len(vm.recent_outputs)) if "out" in needs else 0
        lat = _tail(vm.recent_latency, n_lat)
        out = _tail(vm.recent_outputs, n_out)
        return Sample(
            requests=now.answered - start.answered,
            errors=now.errors - start.errors,
            latencies=lat,
            outputs=out,
            feedback_count=now.feedback_count - start.feedback_count,
            feedback_sum=now.feedback_sum - start.feedback_sum,
        )

    def window(
        self, model: str, stable: str, canary: str, mark: Any, seconds: float, checks: list[AnalysisCheck]
    ) -> Window:
        mark = mark or {}
        needs = frozenset(
            ({"lat"} if any(c.metric == "latency" for c in checks) else set())
            | ({"out"} if any(c.metric == "prediction-shift" for c in checks) else set())
        )
        w = Window(
            canary=self._sample(model, canary, mark.get(canary), needs),
            stable=self._sample(model, stable, mark.get(stable), frozenset()),
        )
        dep = self.runtime.models.get(model)
        vs = dep.versions.get(stable) if dep is not None else None
        if vs is not None and "out" in needs:
            # the reference for the shift test: the stable version's last answers, not only this
            # step's (at a 100% step the stable version answers nothing)
            w.stable.outputs = _tail(vs.metrics.recent_outputs, len(vs.metrics.recent_outputs))
        custom = [c.metric for c in checks if c.query is not None]
        if custom:
            w.error = f"custom metrics ({', '.join(custom)}) need the prometheus provider"
        return w


def _tail(values: Any, n: int) -> Any:
    """The newest `n` entries of a deque of floats as an array (np.fromiter: no Python list)."""
    import numpy as np

    if n <= 0:
        return np.empty(0)
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    return arr[len(arr) - n :]


# --- Prometheus ------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(model|version|stable|namespace|window)\}")


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute only the known placeholders (a template from a pull request is untrusted text)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class PrometheusProvider:
    def __init__(self, url: str, *, namespace: str | None = None, timeout: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.namespace = namespace
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def mark(self, model: str, versions: tuple[str, str]) -> None:
        return None

    def query(self, promql: str) -> float | None:
        import httpx

        try:
            resp = self.http.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise ProviderError(f"Prometheus at {self.url} unreachable: {type(exc).__name__}: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            raise ProviderError(f"Prometheus at {self.url}: HTTP {resp.status_code}, not JSON") from None
        if resp.status_code != 200 or data.get("status") != "success":
            raise ProviderError(f"Prometheus at {self.url}: HTTP {resp.status_code}: {data.get('error') or data}")
        result = (data.get("data") or {}).get("result") or []
        if not result:
            return None  # no series: nothing happened in the window
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ProviderError(f"Prometheus at {self.url}: unexpected answer to {promql!r}") from None
        return None if math.isnan(value) else value

    def _selector(self, model: str, version: str, extra: str = "") -> str:
        ns = f',namespace="{self.namespace}"' if self.namespace else ""
        return "{" + f'model="{model}",version="{version}"{ns}{extra}' + "}"

    def counts(self, model: str, version: str, seconds: float) -> tuple[float, float]:
        window = f"{max(1, math.ceil(seconds))}s"
        not_4xx = self._selector(model, version, ',code!~"4.."')
        only_5xx = self._selector(model, version, ',code=~"5.."')
        answered = self.query(f"sum(increase(mlp_model_requests_total{not_4xx}[{window}]))")
        errors = self.query(f"sum(increase(mlp_model_requests_total{only_5xx}[{window}]))")
        return answered or 0.0, errors or 0.0

    def window(
        self, model: str, stable: str, canary: str, mark: Any, seconds: float, checks: list[AnalysisCheck]
    ) -> Window:
        window = f"{max(1, math.ceil(seconds))}s"
        try:
            answered, errors = self.counts(model, canary, seconds)
            s_answered, s_errors = self.counts(model, stable, seconds)
            w = Window(
                canary=Sample(requests=round(answered), errors=round(errors)),
                stable=Sample(requests=round(s_answered), errors=round(s_errors)),
            )
            for check in checks:
                if check.query is not None:
                    values = {
                        "model": model,
                        "version": canary,
                        "stable": stable,
                        "namespace": self.namespace or "",
                        "window": window,
                    }
                    w.custom[check.metric] = self.query(fill(check.query, values))
                elif check.metric == "latency":
                    sel = self._selector(model, canary)
                    w.custom["latency"] = self.query(
                        f"histogram_quantile({check.percentile / 100:g}, sum by (le) "
                        f"(rate(mlp_model_request_duration_seconds_bucket{sel}[{window}])))"
                    )
        except ProviderError as exc:
            return Window(Sample(), Sample(), error=str(exc))
        return w


class ProviderError(Exception):
    pass
