"""Leader election on a coordination.k8s.io/v1 Lease, against the API server stand-in over HTTP.

- Two electors: one leads; killed without releasing, the other takes over within the lease
  duration; released cleanly, at once.
- Two `mlp controller --leader-elect` processes with different identities (and API tokens, so
  the stand-in's request log says who wrote): the follower writes nothing while the leader
  lives; after SIGKILL of the leader it takes over within the lease duration and applies the
  next commit; the log of writes is one writer, then the other, never interleaved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from standins import kube_apiserver as kube
from test_controller import commit_all, edit, make_platform_repo, set_staging_iris

from mlp.controller.leader import LeaderElector, LeaseConfig

pytestmark = [pytest.mark.timeout(180)]


NS, ENV = "mlp-system", "staging"
WRITES = ("PATCH", "POST", "PUT", "DELETE")
FAST = LeaseConfig("mlp-controller", NS, lease_duration=2.0, renew_deadline=1.5, retry_period=0.2)


def _client(url: str, token: str) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": f"Bearer {token}"}
    cfg.retries = False
    return client.ApiClient(cfg)


def _until(pred: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def api() -> Any:
    server = kube.KubeApiServer(namespaces=("default", NS, "ml-staging", "ml-prod"), prometheus_operator=True).start()
    yield server
    server.stop()


def test_one_leader_takeover_after_expiry_and_at_once_after_release(api: Any) -> None:
    a = LeaderElector(_client(api.url, api.admin_token), "replica-a", FAST)
    b = LeaderElector(_client(api.url, api.admin_token), "replica-b", FAST)
    a.start()
    assert a.wait_for_leadership(10)
    b.start()
    time.sleep(FAST.lease_duration * 1.5)  # longer than a lease: a keeps renewing, b never gets in
    assert a.is_leader() and not b.is_leader()
    lease = api.get_object("coordination.k8s.io", "leases", NS, "mlp-controller")
    assert lease["spec"]["holderIdentity"] == "replica-a"

    killed = time.monotonic()
    a.stop(release=False)  # as if SIGKILLed: no release, the lease must expire
    waited = _until(b.is_leader, 10)
    assert time.monotonic() - killed >= FAST.lease_duration * 0.9  # b waited for the lease to run out
    assert waited <= FAST.lease_duration + 3 * FAST.retry_period
    lease = api.get_object("coordination.k8s.io", "leases", NS, "mlp-controller")
    assert lease["spec"]["holderIdentity"] == "replica-b" and lease["spec"]["leaseTransitions"] == 1

    c = LeaderElector(_client(api.url, api.admin_token), "replica-c", FAST)
    c.start()
    time.sleep(0.5)
    assert not c.is_leader()
    b.stop(release=True)  # a clean stop hands over without waiting for expiry
    assert _until(c.is_leader, 10) < FAST.lease_duration
    c.stop()


def test_a_leader_that_cannot_renew_steps_down(api: Any) -> None:
    lost: list[float] = []
    a = LeaderElector(_client(api.url, api.admin_token), "replica-a", FAST, on_lost=lambda: lost.append(1))
    a.start()
    assert a.wait_for_leadership(10)
    api.inject_fault(503, times=1000, path_contains="/leases")  # the API server cannot serve renewals
    _until(lambda: bool(lost), FAST.renew_deadline + 2)
    assert not a.is_leader()
    a.stop(release=False)


def _controller(repo: Path, state: Path, kubeconfig: Path, identity: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "mlp.cli.main", "controller", "--repo", str(repo), "--interval", "1"]
    cmd += ["--metrics-port", "-1", "--state-dir", str(state), "--env", ENV, "--kubeconfig", str(kubeconfig)]
    cmd += ["--leader-elect", "--leader-elect-namespace", NS, "--leader-elect-id", identity]
    cmd += ["--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "2"]
    cmd += ["--leader-elect-retry-period", "0.25"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def _writers(api: Any) -> list[str]:
    with api.lock:
        requests = list(api.requests)
    return [
        r.user
        for r in requests
        if r.method in WRITES and "dryRun" not in r.query and "/leases" not in r.path and "/namespaces/ml-" in r.path
    ]


@pytest.mark.slow
def test_two_controllers_never_two_writers_and_the_follower_takes_over(api: Any, tmp_path: Path) -> None:
    repo = make_platform_repo(tmp_path / "platform")
    root = Path(repo.working_tree_dir or ".")
    configs = {}
    for name in ("ctl-a", "ctl-b"):
        token = f"token-{name}"
        api.add_user(token, name)
        api.grant(name, ["*"], "*", ["*"])
        configs[name] = kube.write_kubeconfig(tmp_path / f"kubeconfig-{name}", api.url, token=token)
    procs = {name: _controller(root, tmp_path / f"state-{name}", configs[name], name) for name in configs}
    try:
        _until(lambda: len(_writers(api)) > 0, 60)
        first = _writers(api)[0]
        other = "ctl-b" if first == "ctl-a" else "ctl-a"
        _until(lambda: api.get_object("coordination.k8s.io", "leases", NS, "mlp-controller") or {}, 10)
        time.sleep(3)  # several intervals of the leader reconciling; the follower must stay silent
        assert set(_writers(api)) == {first}

        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(timeout=10)
        killed = time.monotonic()
        before = len(_writers(api))
        edit(repo, "environments/staging.yaml", set_staging_iris(1))
        commit_all(repo, "staging: iris back to v1")
        took = _until(lambda: other in _writers(api)[before:], 60)
        # The follower waits out the lease (3 s) plus its fetch and step before its first write.
        assert time.monotonic() - killed >= 2.5
        assert took < 30
        lease = api.get_object("coordination.k8s.io", "leases", NS, "mlp-controller")
        assert lease["spec"]["holderIdentity"] == other
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    writers = _writers(api)
    # One writer, then the other: never interleaved.
    switch = writers.index(other)
    assert set(writers[:switch]) == {first} and set(writers[switch:]) == {other}, writers
