"""The `kubernetes` target: one environment's objects in a cluster, through the API server.

Built on the official `kubernetes` client for what it is good at (kubeconfig and in-cluster
config, TLS, credentials and their refresh), but every call is a raw request through
`ApiClient.call_api(..., _preload_content=False)`: mlp works on plain dict manifests of any
kind, and it needs the HTTP status itself (the typed client returns `None` for the 201 of a
server-side apply that creates).

- `apply` is a server-side apply (`PATCH`, `application/apply-patch+yaml`, field manager `mlp`,
  `force=true` only when asked), with `dryRun=All` for dry runs. Its action is `created` for a
  201, `unchanged` when the resourceVersion is the one this target last saw (a no-op apply writes
  nothing and keeps it; for a dry run, when the would-be object equals the last seen one), and
  `configured` otherwise, including objects this target never listed or read;
- `list_owned` lists each kind with the ownership label selector, following `continue` tokens;
- `delete` uses foreground propagation; deleting what is already gone is not an error;
- a token bucket keeps the client under `qps` / `burst` (lifted, when the limits are mlp's defaults,
  once the server answers with API Priority and Fairness on); 429, transient 5xx answers and failed
  connections are retried by mlp's one retry policy (`mlp.retry`: exponential backoff with
  jitter, `Retry-After` honoured, a bounded total). A 500 that is the server's
  verdict on the body (a server-side apply with an unknown or mistyped field answers 500, not
  422, see the recorded exchanges) is reported at once, never retried;
- every failure becomes a one-line `TargetError` that says what to do (see
  `error_from_response`, tested on a real server's recorded answers);
- `calls` counts requests by verb, so a test or benchmark can prove a no-op reconcile only lists.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlp.engine.inventory import INVENTORY_KEY, INVENTORY_LABEL, adopted_kinds, decode, encode, inventory_name
from mlp.retry import RETRY_STATUSES, Retry, RetryPolicy, connection_verdict, parse_retry_after
from mlp.targets.base import (
    ENV_LABEL,
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    ApplyResult,
    Manifest,
    ObjectRef,
    TargetError,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class ResourceInfo:
    """Where a kind lives in the API: `/apis/<group>/<version>/[namespaces/<ns>/]<plural>`."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def collection(self, namespace: str | None) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


# The kinds mlp renders. Anything else is found through discovery.
KNOWN_KINDS: dict[tuple[str, str], ResourceInfo] = {
    (r.api_version, r.kind): r
    for r in (
        ResourceInfo("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices", True),
        ResourceInfo("v1", "ServiceAccount", "serviceaccounts", True),
        ResourceInfo("v1", "ConfigMap", "configmaps", True),
        ResourceInfo("v1", "Secret", "secrets", True),
        ResourceInfo("v1", "Service", "services", True),
        ResourceInfo("v1", "Namespace", "namespaces", False),
        ResourceInfo("apps/v1", "Deployment", "deployments", True),
        ResourceInfo("batch/v1", "CronJob", "cronjobs", True),
        ResourceInfo("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules", True),
        ResourceInfo("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", True),
    )
}

# Products whose CRDs mlp relies on, for the "X is not installed" message.
CRD_PRODUCTS = {"serving.kserve.io": "KServe", "monitoring.coreos.com": "Prometheus Operator"}

# Metadata the server owns; sending it in an applied configuration is at best noise.
_SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)

# 500s with these Status reasons are the server's own trouble and worth retrying; a 500 without
# a reason is the "not a metav1.Status" path that a bad apply body takes, and retrying it is futile.
_TRANSIENT_REASONS = {"InternalError", "ServerTimeout", "Timeout", "ServiceUnavailable", "TooManyRequests"}
# ...whatever the reason says (servers differ on whether a typed-patch failure carries InternalError).
_BODY_VERDICT = re.compile(
    r"failed to create typed patch object|failed to convert .* to typed object|"
    r"field not declared in schema|expected (numeric|string|boolean|map|list)"
)


_VERB_WORDS = {"patch": "apply", "discovery": "discover"}

# ---------------------------------------------------------------------------------------------
# Error mapping (pure: status + body in, one-line TargetError out)
# ---------------------------------------------------------------------------------------------


def _describe(ref: ObjectRef) -> str:
    if ref.name:
        return str(ref)
    return f"{ref.kind} in namespace {ref.namespace}" if ref.namespace else f"{ref.kind} (all namespaces)"


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _parse_status(body: bytes, content_type: str) -> dict[str, Any] | None:
    if "json" not in content_type:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("kind") == "Status" else None


def _not_served(status: int, body: bytes, content_type: str) -> bool:
    """A 404 that means the resource type is not served (no CRD), not that an object is missing:
    the mux's plain-text `404 page not found`, or the Status for an unknown resource of a known group."""
    if status != 404:
        return False
    st = _parse_status(body, content_type)
    return st is None or st.get("message") == "the server could not find the requested resource"


_WEBHOOK = re.compile(r'admission webhook "(?P<hook>[^"]+)" denied the request:?\s*(?P<msg>.*)', re.S)
_POLICY = re.compile(r"ValidatingAdmissionPolicy '(?P<hook>[^']+)'.*?denied request:?\s*(?P<msg>.*)", re.S)
_RBAC = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<res>[^"]*)" in API group "(?P<group>[^"]*)"'
    r'(?: in the namespace "(?P<ns>[^"]*)"| at the cluster scope)?'
)


def error_from_response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    ref: ObjectRef,
    verb: str,
    server: str,
    retries: int = 0,
) -> TargetError:
    """The one-line error for an API server answer that is not a success."""
    st = _parse_status(body, content_type)
    message = _one_line(str((st or {}).get("message", "")))
    reason = str((st or {}).get("reason", ""))
    details = (st or {}).get("details") or {}
    what = _describe(ref)

    def err(text: str) -> TargetError:
        return TargetError(_one_line(text), ref=ref, status=status)

    hook = _WEBHOOK.search(message) or _POLICY.search(message)
    if hook:
        return err(f'{what} rejected by admission webhook "{hook.group("hook")}": {hook.group("msg")}')
    if status == 401:
        return err(
            f"the API server at {server} rejected the credentials (401 Unauthorized): "
            "check the kubeconfig user or token"
        )
    if status == 403:
        if "is being terminated" in message:
            return err(f'namespace "{ref.namespace}" is being deleted: cannot create {what} in it')
        m = _RBAC.search(message)
        if m:
            resource = m.group("res") + (f".{m.group('group')}" if m.group("group") else "")
            scope = f' in namespace "{m.group("ns")}"' if m.group("ns") else " at cluster scope"
            return err(f'forbidden by RBAC: user "{m.group("user")}" cannot {m.group("verb")} {resource}{scope}')
        return err(f"forbidden: {message or 'the API server refused to ' + verb + ' ' + what}")
    if status == 404:
        if _not_served(status, body, content_type):
            group = ref.api_version.rpartition("/")[0]
            product = CRD_PRODUCTS.get(group)
            if product:
                return err(f"{product} is not installed: {ref.api_version} {ref.kind} not found")
            return err(
                f"{ref.api_version} {ref.kind} is not served by the API server at {server} (is its CRD installed?)"
            )
        if details.get("kind") == "namespaces" and ref.kind != "Namespace":
            ns = details.get("name") or ref.namespace
            return err(f'namespace "{ns}" does not exist: create it (or declare it) before applying {what}')
        return err(f"{what} not found: {message}")
    if status == 409:
        causes = [c for c in details.get("causes") or [] if c.get("reason") == "FieldManagerConflict"]
        if causes:
            owned = ", ".join(
                f"{c.get('field', '?')} is owned by {str(c.get('message', '')).removeprefix('conflict with ')}"
                for c in causes
            )
            return err(
                f"conflict applying {what}: {owned} (another field manager changed them; "
                "rerun with --force-conflicts to take them over)"
            )
        if "has been modified" in message:
            return err(
                f"{what} was modified on the server after it was read (stale resourceVersion): "
                "plan again against the current state"
            )
        if reason == "AlreadyExists":
            return err(f"{what} already exists")
        return err(f"conflict on {what}: {message}")
    if status == 422:
        detail = message.split(" is invalid: ", 1)[-1]
        return err(f"{what} is invalid: {detail}")
    if status == 429:
        return err(
            f"the API server at {server} is throttling requests (429 Too Many Requests) "
            f"and still was after {retries} retries"
        )
    if status == 500 and "failed to create typed patch object" in message:
        detail = re.sub(r"^.*?failed to create typed patch object \([^)]*\):\s*", "", message)
        return err(f"{what} rejected by the API server: {detail}")
    if status >= 500:
        tail = f" after {retries} retries" if retries else ""
        shown = message or body.decode(errors="replace").strip()[:200]
        return err(f"the API server at {server} failed to {verb} {what} ({status} {reason or 'error'}{tail}): {shown}")
    if status == 400:
        return err(f"{what} refused (400 Bad Request): {message or body.decode(errors='replace').strip()[:200]}")
    return err(f"{verb} {what} failed ({status} {reason}): {message or body.decode(errors='replace')[:200]}")


def _connection_reason(exc: BaseException) -> str:
    text = repr(exc)
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in type(exc).__name__:
        return "timed out"
    if "Name or service not known" in text or "NameResolutionError" in text or "nodename nor servname" in text:
        return "host name does not resolve"
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return "TLS verification failed (check the cluster CA in the kubeconfig)"
    return type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Client-side rate limiting
# ---------------------------------------------------------------------------------------------


# Sent on every response by an API server whose API Priority and Fairness is on (the default since 1.20)
APF_HEADER = "X-Kubernetes-PF-FlowSchema-UID"


class TokenBucket:
    """At most `burst` requests at once, refilled at `qps` per second (client-go's flowcontrol)."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0
        self.lifted = False

    def lift(self) -> None:
        """No client-side limit from now on: the server's own flow control governs."""
        self.lifted = True

    def acquire(self) -> None:
        if self.lifted:
            return
        with self._lock:
            now = self._clock()
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.qps)
            self._last = now
            self.tokens -= 1
            wait = -self.tokens / self.qps if self.tokens < 0 else 0.0
        if wait > 0:
            self.waited += wait
            self._sleep(wait)


# ---------------------------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------------------------


class KubernetesTarget:
    """Objects of one environment in a Kubernetes cluster (see the module docstring)."""

    name = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str | None = None,
        field_manager: str = FIELD_MANAGER,
        qps: float = 50.0,
        burst: int = 100,
        max_retries: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        connect_retries: int = 2,
        request_timeout: tuple[float, float] = (5.0, 30.0),
        page_size: int = 500,
        discovery_retry_delay: float = 0.5,
        impersonate: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        terminating_timeout: float | None = None,
        server_fairness: bool = False,
    ) -> None:
        self.api = api_client
        # With `server_fairness` (the limits were not chosen by the user), the client-side limit is
        # lifted once the server shows API Priority and Fairness is on, as controller-runtime and
        # Flux do: the server then queues or answers 429 (retried, Retry-After honoured) per flow.
        self.server_fairness = server_fairness
        # How long an apply waits for an object that is still being deleted (a prune's foreground
        # deletion) before it re-creates it; past that the apply fails saying so.
        if terminating_timeout is None:
            try:
                terminating_timeout = float(os.environ.get("MLP_TERMINATING_TIMEOUT", "") or 120.0)
            except ValueError:
                terminating_timeout = 120.0
        self.terminating_timeout = terminating_timeout
        self._clock = clock
        self.namespace = namespace
        self.list_all_namespaces = False
        self.field_manager = field_manager
        # mlp's one retry policy (mlp.retry); Retry-After included, at most a minute of waiting per call
        self.retry = RetryPolicy(
            attempts=max_retries + 1, base=backoff_base, cap=backoff_max, jitter=backoff_base, budget=60.0, sleep=sleep
        )
        self.connect_retries = connect_retries
        self.request_timeout = request_timeout
        self.page_size = page_size
        self.discovery_retry_delay = discovery_retry_delay
        self.bucket = TokenBucket(qps, burst, clock=clock, sleep=sleep)
        self._sleep = sleep
        self.calls: Counter[str] = Counter()
        # `Warning` headers the server sent (deprecations, pruned unknown fields), for the CLI to show
        self.warnings: list[str] = []
        self.retries: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._discovered: dict[tuple[str, str], ResourceInfo] = {}
        # resourceVersion last seen per object, by environment label (to tell "unchanged" from
        # "configured" after an apply); `forget` drops an environment's once its step is done.
        self._seen: dict[str, dict[ObjectRef, str]] = {}
        if impersonate:
            api_client.set_default_header("Impersonate-User", impersonate)

    # ---- construction ----

    @property
    def cluster(self) -> object:
        """What targets on one cluster share (their client-side rate limit): the identity of the cluster."""
        return self.bucket

    def scoped(self, namespace: str | None, *, list_all_namespaces: bool = False) -> KubernetesTarget:
        """The same client, rate limit and discovery, listing and keeping its inventory in `namespace`.

        Environments on one cluster share a target but each lists only its own namespace, so
        the controller needs no cluster-wide read rights (least-privilege RBAC per namespace).
        `list_all_namespaces` keeps the inventory in `namespace` but lists owned objects in
        every namespace: the platform's own install spans several.
        """
        if namespace == self.namespace and list_all_namespaces == self.list_all_namespaces:
            return self
        other = copy.copy(self)
        other.namespace = namespace
        other.list_all_namespaces = list_all_namespaces
        return other

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, context: str | None = None, **kwargs: Any
    ) -> KubernetesTarget:
        """From a kubeconfig file (default: $KUBECONFIG or ~/.kube/config) and optional context."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        cfg = client.Configuration()
        file = str(path) if path else None
        try:
            config.load_kube_config(config_file=file, context=context, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            where = file or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise TargetError(f"kubeconfig {where}: {_one_line(str(exc))}") from None
        return cls(cls._client(cfg), **kwargs)

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> KubernetesTarget:
        """From the pod's service account (KUBERNETES_SERVICE_HOST and the mounted token)."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as exc:
            raise TargetError(f"in-cluster config: {_one_line(str(exc))}") from None
        return cls(cls._client(cfg), **kwargs)

    @classmethod
    def from_environment(
        cls, kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None, **kwargs: Any
    ) -> KubernetesTarget:
        """A kubeconfig when one is given or present, else the in-cluster config."""
        default = Path(os.path.expanduser("~/.kube/config"))
        if (
            kubeconfig
            or os.environ.get("KUBECONFIG")
            or default.is_file()
            or not os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            return cls.from_kubeconfig(kubeconfig, context, **kwargs)
        return cls.in_cluster(**kwargs)

    @staticmethod
    def _client(cfg: Any) -> Any:
        from kubernetes import client

        # Retries are ours (with backoff and a clear error); urllib3's own would hide the cause.
        cfg.retries = False
        cfg.connection_pool_maxsize = (
            32  # one pooled connection per concurrent apply (cli._common.MAX_APPLY_CONCURRENCY)
        )
        return client.ApiClient(cfg)

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    @property
    def write_calls(self) -> int:
        """Requests that could change the cluster (dry runs excluded)."""
        return sum(n for verb, n in self.calls.items() if verb in ("patch", "delete", "create", "update"))

    # ---- the Target protocol ----

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        """Owned objects of `environment` (in the target's namespace, or all when it has none).

        A kind whose CRD is not installed cannot hold objects: with the default kinds it is
        skipped; a kind asked for by name raises the 404 "X is not installed" TargetError, so a
        caller that needs to write that kind can say so before planning.
        """
        return self._list_owned(environment, kinds, self._remembered)

    def owned_versions(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> dict[ObjectRef, str]:
        """The resourceVersion of each object `list_owned` would return, and nothing else of them.

        Read a page at a time and dropped page by page: a controller's check that nothing
        changed costs one page of objects in memory, not every object of the environment.
        """
        return dict(self._list_owned(environment, kinds, lambda item: (ObjectRef.of(item), _rv(item))))

    def _list_owned(
        self, environment: str, kinds: list[tuple[str, str]] | None, keep: Callable[[Manifest], _T]
    ) -> list[_T]:
        selector = f"{MANAGED_BY}={MANAGED_BY_VALUE},{ENV_LABEL}={environment}"
        out: list[_T] = []
        for api_version, kind in kinds or adopted_kinds("kubernetes"):
            ref = ObjectRef(api_version, kind, self.namespace or "", "")
            try:
                info = self.resource_for(api_version, kind)
            except TargetError as exc:
                if exc.status == 404 and kinds is None:
                    continue
                raise
            out += self._list_kind(info, ref, selector, keep, raise_missing=kinds is not None)
        return out

    def _remembered(self, item: Manifest) -> Manifest:
        self._remember(item)
        return item

    def _list_kind(
        self, info: ResourceInfo, ref: ObjectRef, selector: str, keep: Callable[[Manifest], _T], *, raise_missing: bool
    ) -> list[_T]:
        """Every page of one kind's owned objects, each item passed through `keep`."""
        items: list[_T] = []
        token = ""
        restarted = False
        while True:
            query = {"labelSelector": selector, "limit": str(self.page_size)}
            if token:
                query["continue"] = token
            status, ctype, body = self._request(
                "list", "GET", info.collection(None if self.list_all_namespaces else self.namespace), query, ref=ref
            )
            if _not_served(status, body, ctype) and not raise_missing:
                return []  # the kind is not served (CRD not installed): nothing of it can exist
            if status == 410 and token and not restarted:
                # the continue token outlived etcd's compaction: start one fresh, consistent list
                items, token, restarted = [], "", True
                continue
            if status != 200:
                raise error_from_response(status, body, ctype, ref=ref, verb="list", server=self.server)
            page = json.loads(body)
            for item in page.get("items") or []:
                # built-in lists omit apiVersion/kind on items; custom resource lists carry them
                item.setdefault("apiVersion", info.api_version)
                item.setdefault("kind", info.kind)
                items.append(keep(item))
            token = (page.get("metadata") or {}).get("continue") or ""
            del page, body
            if not token:
                return items

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        ref = ObjectRef.of(obj)
        info, ref = self._locate(ref)
        body = self._applied_configuration(obj, info, ref.namespace)
        query = {"fieldManager": self.field_manager}
        if force_conflicts:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        status, ctype, raw = self._request(
            "patch",
            "PATCH",
            info.item(ref.namespace, ref.name),
            query,
            body=body,
            content_type="application/apply-patch+yaml",
            ref=ref,
            dry_run=dry_run,
        )
        if status not in (200, 201):
            raise error_from_response(status, raw, ctype, ref=ref, verb="apply", server=self.server)
        live = json.loads(raw)
        deleting = (live.get("metadata") or {}).get("deletionTimestamp")
        if deleting and not dry_run:
            # Applied to an object a deletion is already removing: it would vanish right after.
            return self._apply_after_deletion(obj, ref, str(deleting), force_conflicts)
        if status == 201:
            action = "created"
        elif dry_run:
            # a dry run never bumps the resourceVersion: compare the would-be object with the stored one
            stored = self.get(ref)
            same = stored is not None and _comparable(stored) == _comparable(live)
            action = "unchanged" if same else "configured"
        else:
            before = self._seen.get(_env_of(live), {}).get(ref)
            # a no-op apply keeps the resourceVersion; never seen: the server does not say, so "configured"
            action = "unchanged" if before is not None and before == _rv(live) else "configured"
        if not dry_run:
            self._remember(live)
        return ApplyResult(ref=ref, action=action, live=live)

    def _apply_after_deletion(self, obj: Manifest, ref: ObjectRef, since: str, force_conflicts: bool) -> ApplyResult:
        """Wait (bounded) until a terminating object is gone, then create it afresh."""
        deadline = self._clock() + self.terminating_timeout
        delay = 0.2
        while self.get(ref) is not None:
            if self._clock() >= deadline:
                raise TargetError(
                    f"{ref}: still terminating after {self.terminating_timeout:.0f}s (deletion requested at {since});"
                    " apply again once it is gone",
                    ref=ref,
                    status=409,
                )
            self._sleep(delay)
            delay = min(delay * 2, 2.0)
        result = self.apply(obj, force_conflicts=force_conflicts)
        return ApplyResult(ref=result.ref, action="created", live=result.live)

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        info, ref = self._locate(ref)
        query = {"dryRun": "All"} if dry_run else {}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
        status, ctype, raw = self._request(
            "delete",
            "DELETE",
            info.item(ref.namespace, ref.name),
            query,
            body=body,
            content_type="application/json",
            ref=ref,
            dry_run=dry_run,
        )
        if status == 404:
            return  # already gone (or its kind is no longer served): the goal is met
        if status not in (200, 202):
            raise error_from_response(status, raw, ctype, ref=ref, verb="delete", server=self.server)
        if not dry_run:
            with self._lock:
                for seen in self._seen.values():
                    seen.pop(ref, None)

    # ---- inventory (mlp.engine.inventory) ----

    def _inventory_ref(self, environment: str) -> ObjectRef:
        return ObjectRef("v1", "ConfigMap", self.namespace or "default", inventory_name(environment))

    def read_inventory(self, environment: str) -> list[ObjectRef] | None:
        """The environment's inventory ConfigMap, or None when there is none (or it is unreadable)."""
        obj = self.get(self._inventory_ref(environment))
        if obj is None:
            return None
        try:
            return decode(str((obj.get("data") or {}).get(INVENTORY_KEY) or ""))
        except ValueError:
            self.warnings.append(f"{self._inventory_ref(environment)}: unreadable inventory; adopting labelled objects")
            return None

    def write_inventory(self, environment: str, refs: list[ObjectRef]) -> None:
        ref = self._inventory_ref(environment)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": ref.name,
                    "namespace": ref.namespace,
                    # not the environment label: the inventory is never listed, planned or pruned as owned
                    "labels": {MANAGED_BY: MANAGED_BY_VALUE, INVENTORY_LABEL: environment},
                },
                "data": {INVENTORY_KEY: encode(refs)},
            }
        )

    # ---- extras ----

    def get(self, ref: ObjectRef) -> Manifest | None:
        """The live object, or None when it does not exist."""
        info, ref = self._locate(ref)
        status, ctype, raw = self._request("get", "GET", info.item(ref.namespace, ref.name), {}, ref=ref)
        if status == 404 and not _not_served(status, raw, ctype):
            return None
        if status != 200:
            raise error_from_response(status, raw, ctype, ref=ref, verb="get", server=self.server)
        obj: Manifest = json.loads(raw)
        obj.setdefault("apiVersion", ref.api_version)
        obj.setdefault("kind", ref.kind)
        self._remember(obj)
        return obj

    def resource_for(self, api_version: str, kind: str) -> ResourceInfo:
        """The resource path of a kind: the static table, else API discovery (cached)."""
        if (api_version, kind) == ("mlp.dev/v1", "ModelDeployment"):
            raise TargetError(
                "mlp.dev/v1 ModelDeployment objects are for the local target; "
                "a kubernetes environment renders KServe InferenceServices"
            )
        known = KNOWN_KINDS.get((api_version, kind)) or self._discovered.get((api_version, kind))
        if known:
            return known
        ref = ObjectRef(api_version, kind, "", "")
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        # just after a CRD is installed, its resources can be served a moment before its
        # group-version discovery document is (seen on a real v1.32 server): ask once more
        status, ctype, raw = (
            RetryPolicy(attempts=2, sleep=self._sleep)
            .run(
                lambda: self._request("discovery", "GET", path, {}, ref=ref),
                verdict=lambda answer: Retry(after=self.discovery_retry_delay) if answer[0] == 404 else None,
            )
            .answer
        )
        if status != 200:
            raise error_from_response(
                404 if status == 404 else status,
                raw,
                ctype if status != 404 else "",
                ref=ref,
                verb="discover",
                server=self.server,
            )
        for r in json.loads(raw).get("resources") or []:
            if r.get("kind") == kind and "/" not in r.get("name", ""):
                info = ResourceInfo(api_version, kind, r["name"], bool(r.get("namespaced")))
                self._discovered[(api_version, kind)] = info
                return info
        raise error_from_response(
            404, b"404 page not found\n", "text/plain", ref=ref, verb="discover", server=self.server
        )

    # ---- internals ----

    def _locate(self, ref: ObjectRef) -> tuple[ResourceInfo, ObjectRef]:
        """The resource serving `ref`'s kind, and `ref` with the namespace its requests use
        (none for a cluster-scoped kind, else its own or the target's default)."""
        info = self.resource_for(ref.api_version, ref.kind)
        namespace = ""
        if info.namespaced:
            namespace = ref.namespace or self.namespace or ""
            if not namespace:
                raise TargetError(f"{ref} has no namespace and the target has no default namespace", ref=ref)
        return info, ObjectRef(ref.api_version, ref.kind, namespace, ref.name)

    def _applied_configuration(self, obj: Manifest, info: ResourceInfo, namespace: str) -> Manifest:
        body = {k: v for k, v in obj.items() if k != "status"}
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_METADATA}
        if info.namespaced:
            meta["namespace"] = namespace
        body["metadata"] = meta
        return body

    def forget(self, environment: str) -> None:
        """Drop what was remembered of `environment`'s objects (a long-running caller, after each step).

        The next `list_owned` remembers them again; until then an apply reports "configured"
        where it cannot tell.
        """
        with self._lock:
            self._seen.pop(environment, None)

    def _remember(self, obj: Manifest) -> None:
        try:
            ref = ObjectRef.of(obj)
        except KeyError:
            return
        rv = _rv(obj)
        if rv:
            with self._lock:
                self._seen.setdefault(_env_of(obj), {})[ref] = rv

    def _request(
        self,
        verb: str,
        method: str,
        path: str,
        query: dict[str, str],
        *,
        ref: ObjectRef,
        body: Any = None,
        content_type: str | None = None,
        dry_run: bool = False,
    ) -> tuple[int, str, bytes]:
        """One logical call: rate limited, retried by `self.retry` on 429 / transient 5xx / connection errors.

        Every verb mlp sends is idempotent (GET, a server-side apply PATCH, DELETE), so each is
        retried on any transient failure.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        key = f"{verb}:dry-run" if dry_run else verb
        connect_failures = 0

        def unreachable(reason: str) -> TargetError:
            return TargetError(f"cannot reach the Kubernetes API server at {self.server}: {reason}", ref=ref)

        def send() -> tuple[int, str, bytes, Any]:
            self.bucket.acquire()
            with self._lock:
                self.calls[key] += 1
            try:
                resp = self.api.call_api(
                    path,
                    method,
                    query_params=list(query.items()),
                    header_params=dict(headers),
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                )
                answer = (resp.status, resp.headers.get("Content-Type", ""), resp.data, resp.headers)
                resp.release_conn()
            except AttributeError as exc:
                # the client turns a TLS failure into ApiException(status=0) and then trips over its
                # missing body (`e.body.decode`): what failed is in the exception being handled
                cause = exc.__context__
                if isinstance(cause, ApiException) and not cause.status:
                    raise unreachable(_connection_reason(Exception(cause.reason))) from None
                raise
            except ApiException as exc:
                if not exc.status:  # the same TLS wrapper, should a client version get past the decode
                    raise unreachable(_connection_reason(Exception(exc.reason))) from None
                resp_headers = exc.headers or {}
                ctype = resp_headers.get("Content-Type", "") if resp_headers else ""
                raw = exc.body.encode() if isinstance(exc.body, str) else (exc.body or b"")
                answer = (int(exc.status), ctype, raw, resp_headers)
            if self.server_fairness and not self.bucket.lifted and answer[3] and APF_HEADER in answer[3]:
                self.bucket.lift()
            for warning in _warnings(answer[3]):
                with self._lock:
                    if warning not in self.warnings:
                        self.warnings.append(warning)
            return answer

        def verdict(answer: tuple[int, str, bytes, Any]) -> Retry | None:
            status, ctype, raw, resp_headers = answer
            if not self._retryable(status, raw, ctype):
                return None
            return Retry(after=_retry_after(resp_headers, raw, ctype, self.retry.now))

        def failure(exc: BaseException) -> Retry | None:
            nonlocal connect_failures
            found = connection_verdict(exc)
            if found is not None and not isinstance(exc, TargetError):
                connect_failures += 1
                # an unreachable server is reported after a few tries, not after the whole budget
                return found if connect_failures <= self.connect_retries else None
            return None

        def counted(answer: tuple[int, str, bytes, Any] | None, exc: BaseException | None, wait: float) -> None:
            if answer is not None:
                with self._lock:
                    self.retries[answer[0]] += 1

        try:
            outcome = self.retry.run(send, verdict=verdict, failure=failure, on_retry=counted)
        except TargetError:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise unreachable(_connection_reason(exc)) from None
        status, ctype, raw, _ = outcome.answer
        if outcome.verdict is not None:  # still failing when the attempts or the time ran out
            raise error_from_response(
                status,
                raw,
                ctype,
                ref=ref,
                verb=_VERB_WORDS.get(verb, verb),
                server=self.server,
                retries=outcome.retries,
            )
        return status, ctype, raw

    @staticmethod
    def _retryable(status: int, raw: bytes, ctype: str) -> bool:
        if status in RETRY_STATUSES:
            return True
        if status == 500:
            st = _parse_status(raw, ctype)
            if st is not None and _BODY_VERDICT.search(str(st.get("message", ""))):
                return False  # the manifest does not fit the schema: the same answer every time
            return st is None or st.get("reason") in _TRANSIENT_REASONS
        return False


def _warnings(headers: Any) -> list[str]:
    """The texts of `Warning: 299 - "text"` headers (RFC 7234 warn-code 299, as the API server sends)."""
    if not headers:
        return []
    values = headers.getlist("Warning") if hasattr(headers, "getlist") else [headers.get("Warning")]
    out = []
    for value in values:
        for m in re.finditer(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"', value or ""):
            out.append(m.group(1).replace('\\"', '"'))
    return out


def _env_of(obj: Manifest) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(ENV_LABEL) or "")


def _rv(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _comparable(obj: Manifest) -> Manifest:
    """An object without what changes on every write (for comparing a dry run with the live state)."""
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("resourceVersion", "generation", "managedFields")
    }
    return {**obj, "metadata": meta}


def _retry_after(headers: Any, raw: bytes, ctype: str, now: Callable[[], float]) -> float | None:
    """`Retry-After`, else the Status' `details.retryAfterSeconds` (what the API server sets on a 429)."""
    after = parse_retry_after(headers.get("Retry-After") if headers else None, now)
    if after is not None:
        return after
    st = _parse_status(raw, ctype) or {}
    seconds = (st.get("details") or {}).get("retryAfterSeconds")
    return float(seconds) if isinstance(seconds, int | float) else None
