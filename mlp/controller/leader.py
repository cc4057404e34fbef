"""Leader election on a `coordination.k8s.io/v1` Lease, so that two controller replicas never both write.

The protocol is the one client-go's leaderelection package and kube-controller-manager use,
so `kubectl get lease` reads it the usual way:

- A candidate reads the Lease. If it is held by someone else whose record has changed within
  the last `lease_duration` seconds *as observed locally* (never comparing clocks across
  machines), it waits. Otherwise it writes itself in as holder with an update that carries
  the resourceVersion it read: of two candidates racing, the API server lets one through and
  answers the other 409.
- The leader renews every `retry_period`. If it cannot renew for `renew_deadline` seconds it
  has lost the lease: `on_lost` runs (the controller stops writing and exits, as client-go's
  users do), because another replica may already hold it.
- On a clean stop the leader releases the Lease (empty holder, one-second duration), so a
  follower takes over at once instead of waiting for expiry.

renew_deadline < lease_duration leaves the old leader time to notice before anyone else may
take over; that margin is what makes "never two writers" hold.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    name: str = "mlp-controller"
    namespace: str = "mlp-system"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


class LeaderElector:
    """Acquire and hold a Lease in a background thread; `is_leader()` gates every write."""

    def __init__(
        self,
        api_client: Any,
        identity: str,
        config: LeaseConfig = LeaseConfig(),
        *,
        on_started: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.identity = identity
        self.config = config
        self.on_started = on_started
        self.on_lost = on_lost
        self.clock = clock
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion)
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._thread: threading.Thread | None = None
        self.transitions = 0
        # No call may outlast the renew deadline, or a hung connection would hide a lost lease.
        self._timeout = max(0.5, self.config.renew_deadline / 2)

    # --- public ------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlp-leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; a leader gives the Lease up so a follower need not wait for expiry."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.retry_period + 5)
        if release and self._leader.is_set():
            self._release()
        self._leader.clear()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self._leader.wait(timeout)

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self.try_acquire_or_renew()
            except Exception as exc:  # an unreachable API server is a failed renewal, not a crash
                log.warning("leader election: %s", exc)
                held = False
            now = self.clock()
            if held:
                self._renewed_at = now
                if not self._leader.is_set():
                    self._leader.set()
                    log.info("leader election: %s is now the leader of %s", self.identity, self._where())
                    if self.on_started:
                        self.on_started()
            elif self._leader.is_set() and (
                now - self._renewed_at >= self.config.renew_deadline
                or (self._observed is not None and self._observed[0] not in ("", self.identity))
            ):
                self._leader.clear()
                log.error("leader election: %s could not renew %s in time; stepping down", self.identity, self._where())
                if self.on_lost:
                    self.on_lost()
            self._stop.wait(self.config.retry_period)

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this identity holds the Lease after it."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        now = dt.datetime.now(dt.UTC)
        try:
            lease = self.api.read_namespaced_lease(
                self.config.name, self.config.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.config.name, namespace=self.config.namespace),
                spec=self._spec(now, acquire_time=now, transitions=0),
            )
            try:
                self.api.create_namespaced_lease(self.config.namespace, body, _request_timeout=self._timeout)
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time), str(lease.metadata.resource_version))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        duration = float(spec.lease_duration_seconds or self.config.lease_duration)
        if holder and holder != self.identity and self.clock() - self._observed_at < duration:
            return False  # held, and renewed recently enough as far as this replica has seen
        ours = holder == self.identity
        transitions = int(spec.lease_transitions or 0) + (0 if ours else 1)
        acquire = spec.acquire_time if ours and spec.acquire_time else now
        lease.spec = self._spec(now, acquire_time=acquire, transitions=transitions)
        try:
            updated = self.api.replace_namespaced_lease(
                self.config.name, self.config.namespace, lease, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first: not ours this round
                return False
            raise
        self._observed = (self.identity, str(updated.spec.renew_time), str(updated.metadata.resource_version))
        self._observed_at = self.clock()
        if not ours:
            self.transitions = transitions
        return True

    def _spec(self, now: dt.datetime, *, acquire_time: dt.datetime, transitions: int) -> Any:
        from kubernetes import client

        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.config.lease_duration),
            acquire_time=acquire_time,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _release(self) -> None:
        from kubernetes.client.rest import ApiException

        try:
            lease = self.api.read_namespaced_lease(
                self.config.name, self.config.namespace, _request_timeout=self._timeout
            )
            if (lease.spec.holder_identity or "") != self.identity:
                return
            now = dt.datetime.now(dt.UTC)
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = now
            lease.spec.acquire_time = now
            self.api.replace_namespaced_lease(
                self.config.name, self.config.namespace, lease, _request_timeout=self._timeout
            )
            log.info("leader election: %s released %s", self.identity, self._where())
        except (ApiException, OSError) as exc:
            log.warning("leader election: could not release %s: %s", self._where(), exc)

    def _where(self) -> str:
        return f"lease {self.config.namespace}/{self.config.name}"
