"""From a tracked run to a reviewed pull request: Git is the registry, the PR is the approval.

`register` reads a run from a tracking server (mlp's or MLflow's), copies its model artifact
to the model store with its sha256, adds a version (uri, digest, metrics, lineage) to the
model's spec file with a ruamel round trip (comments, quoting and layout kept), commits that
on a new branch, pushes it and opens a pull/merge request whose comment compares the
candidate's metrics with the versions every environment deploys, under that environment's
gates. Nothing is written to Git before the repository validates with the change; a failure
after the branch was created removes the branch and leaves the checkout as it was.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from mlp.governance.policy import check_gate, deployed_versions
from mlp.serving.artifacts import ArtifactError, ArtifactStore
from mlp.sources.directory import read_directory
from mlp.specs import LoadResult, load
from mlp.specs.loader import SpecSet
from mlp.tracking.client import ClientError, Run, TrackingClient
from mlp.webhooks.hosting import GitHost, HostError, upsert_comment

COMMENT_MARKER = "<!-- mlp:register -->"
LOADABLE = {".pkl", ".joblib", ".json", ".ubj", ".txt", ".onnx"}  # what the runtime's loaders read
MODEL_FILES = ("model.pkl", "model.joblib", "model.json", "model.ubj", "model.onnx", "model.txt")


class RegistryError(Exception):
    """Registration refused; the message is one located line (file:line:col where there is a file)."""


@dataclass
class Registration:
    model: str
    version: int
    uri: str
    digest: str
    spec_path: str
    branch: str
    base: str
    commit: str
    metrics: dict[str, float]
    lineage: dict[str, str]
    diff: str = ""
    pull_number: int | None = None
    pull_url: str = ""
    comment: str = ""
    warnings: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "uri": self.uri,
            "digest": self.digest,
            "spec": self.spec_path,
            "branch": self.branch,
            "base": self.base,
            "commit": self.commit,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "pull_request": {"number": self.pull_number, "url": self.pull_url} if self.pull_number else None,
            "warnings": self.warnings,
        }


def _load(root: Path) -> LoadResult:
    return load(read_directory(root))


def _first_errors(result: LoadResult, n: int = 3) -> str:
    errs = result.errors
    more = f" (and {len(errs) - n} more)" if len(errs) > n else ""
    return "; ".join(str(d) for d in errs[:n]) + more


def _rt_yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _detect_indent(text: str) -> tuple[int, int]:
    """(sequence, offset) of the file's block sequences: `- ` indented under its key or not."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        m = re.match(r"^( *)[\w.-]+:\s*$", line)
        if not m:
            continue
        nxt = re.match(r"^( *)- ", lines[i + 1])
        if nxt:
            offset = len(nxt.group(1)) - len(m.group(1))
            return offset + 2, offset
    return 4, 2


def _flow(data: dict[str, Any]) -> CommentedMap:
    cm = CommentedMap(data)
    cm.fa.set_flow_style()
    return cm


def add_version(text: str, doc_index: int, version: dict[str, Any], where: str) -> str:
    """The file's text with `version` appended to spec.versions of document `doc_index`; the rest kept."""
    y = _rt_yaml()
    seq, offset = _detect_indent(text)
    y.indent(mapping=2, sequence=seq, offset=offset)
    y.explicit_start = text.lstrip().startswith("---")
    try:
        docs = list(y.load_all(text))
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RegistryError(f"{where}:{loc}: YAML syntax error: {problem}") from None
    doc = docs[doc_index]
    versions = doc["spec"]["versions"]
    if not isinstance(versions, CommentedSeq):
        raise RegistryError(f"{where}: spec.versions is not a list")
    entry = CommentedMap()
    for key, value in version.items():
        entry[key] = _flow(value) if isinstance(value, dict) else value
    versions.append(entry)
    out = io.StringIO()
    y.dump_all(docs, out)
    return out.getvalue()


def _experiment_spec_for(specs: SpecSet, model: str, mlflow_experiment: str) -> str | None:
    for name, exp in sorted(specs.experiments.items()):
        if exp.spec.model == model and (exp.spec.mlflowExperiment or name) == mlflow_experiment:
            return name
    return None


def _find_artifact(client: TrackingClient, run: Run, artifact: str | None) -> tuple[str, str]:
    """(artifact_uri root, path under it) of the model file the run produced."""
    roots = [run.artifact_uri]
    for model_id in run.model_outputs:  # MLflow 3: log_model writes to a logged model's own location
        try:
            roots.append(client.logged_model(model_id)["info"]["artifact_uri"])
        except ClientError:
            continue
    if artifact:
        for root in roots:
            parent = artifact.rsplit("/", 1)[0] if "/" in artifact else ""
            try:
                if any(f["path"] == artifact for f in client.list_artifacts(root, parent)):
                    return root, artifact
            except ClientError:
                continue
        raise RegistryError(f"run {run.id}: no artifact {artifact!r} (looked under {', '.join(roots)})")
    for root in roots:
        try:
            files = [f["path"] for f in client.walk_artifacts(root)]
        except ClientError:
            continue
        for name in MODEL_FILES:
            match = sorted((p for p in files if p.rsplit("/", 1)[-1] == name), key=len)
            if match:
                return root, match[0]
        skops = [p for p in files if p.endswith(".skops")]
        if skops:
            raise RegistryError(
                f"run {run.id}: the model was saved as skops ({skops[0]}), which mlp's runtime does not load; "
                "log it with serialization_format='cloudpickle' or name a loadable file with --artifact"
            )
    raise RegistryError(
        f"run {run.id}: no model file ({', '.join(MODEL_FILES)}) among its artifacts; name one with --artifact"
    )


def _dataset_uri(ds: dict[str, Any]) -> str:
    """The dataset's URI: MLflow sends `source` as JSON ({"uri": ...}, {"url": ...}) or a plain string."""
    source = ds.get("source")
    if isinstance(source, str) and source.startswith("{"):
        try:
            parsed = json.loads(source)
            for key in ("uri", "url", "path", "table_name"):
                if isinstance(parsed, dict) and parsed.get(key):
                    return str(parsed[key])
        except ValueError:
            pass
    return str(source or ds.get("name"))


def comparison_comment(specs: SpecSet, model: str, version: int, metrics: dict[str, float], run: Run) -> str:
    """Markdown: the candidate's metrics against every environment's deployed versions, with the gates."""
    lines = [COMMENT_MARKER, f"### Register `{model}` version {version}", ""]
    lines.append(f"From run `{run.id}` ({run.name or 'unnamed'}).")
    lines.append("")
    names = sorted(metrics)
    columns = [f"candidate v{version}"]
    rows: dict[str, list[str]] = {m: [f"{metrics[m]:.4g}"] for m in names}
    model_spec = specs.models.get(model)
    gate_lines: list[str] = []
    for env_name, env in sorted(specs.environments.items()):
        dep = env.spec.deployments.get(model)
        if dep is None:
            continue
        for v, role in sorted(deployed_versions(dep).items()):
            mv = model_spec.spec.version(v) if model_spec else None
            columns.append(f"{env_name} v{v} ({role})")
            for m in names:
                value = mv.metrics.get(m) if mv else None
                rows[m].append(f"{value:.4g}" if value is not None else "-")
        stable = model_spec.spec.version(dep.version) if model_spec else None
        for gate in env.spec.gates:
            chk = check_gate(gate, metrics, stable.metrics if stable else {})
            mark = "✅" if chk.passed else "❌"
            gate_lines.append(f"| {env_name} | `{gate.metric}` {chk.rule} | {mark} {chk.reason or 'passes'} |")
    if not any(len(r) > 1 for r in rows.values()) and len(columns) == 1:
        lines.append(f"`{model}` is not deployed in any environment yet.")
        lines.append("")
    lines.append("| metric | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for m in names:
        lines.append(f"| `{m}` | " + " | ".join(rows[m]) + " |")
    if gate_lines:
        lines += ["", "**Gates** (checked against each environment's stable version; promotion decides):", ""]
        lines += ["| environment | gate | result |", "|---|---|---|", *gate_lines]
    return "\n".join(lines) + "\n"


def register(
    repo_root: Path,
    client: TrackingClient,
    run_id: str,
    model: str,
    destination: str,
    *,
    artifact: str | None = None,
    host: GitHost | None = None,
    host_repo: str | None = None,
    base: str | None = None,
    remote: str = "origin",
    push: bool = True,
    s3_endpoint_url: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Registration:
    root = repo_root.resolve()
    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RegistryError(f"{root}: not a Git repository") from None
    if repo.head.is_detached:
        raise RegistryError(f"{root}: HEAD is detached; check out the branch to register against")
    before = _load(root)
    if not before.ok:
        raise RegistryError(f"the repository does not validate, nothing registered: {_first_errors(before)}")
    if model not in before.specs.models:
        raise RegistryError(f"model {model!r}: no Model spec of that name in {root}")
    ref = before.specs.sources[("Model", model)]
    spec_file = root / ref.path
    original_text = spec_file.read_text(encoding="utf-8")
    rel = spec_file.relative_to(root).as_posix()
    if repo.is_dirty(path=rel) or rel in repo.untracked_files:
        raise RegistryError(f"{rel}: has uncommitted changes; commit or stash them first")

    progress(f"reading run {run_id}")
    try:
        run = client.get_run(run_id)
        artifact_root, artifact_path = _find_artifact(client, run, artifact)
        experiment_name = client.call("GET", "experiments/get", {"experiment_id": run.experiment_id})["experiment"][
            "name"
        ]
    except ClientError as exc:
        raise RegistryError(f"run {run_id}: {exc}") from None
    suffix = Path(artifact_path).suffix.lower()
    if suffix not in LOADABLE:
        raise RegistryError(
            f"run {run_id}: {artifact_path} is not a format mlp's runtime loads ({', '.join(sorted(LOADABLE))})"
        )

    spec = before.specs.models[model].spec
    version = max(v.version for v in spec.versions) + 1
    branch = f"mlp/register/{model}-v{version}"
    if branch in [h.name for h in repo.heads]:
        raise RegistryError(f"branch {branch} already exists")

    progress(f"copying {artifact_path} to {destination}")
    with tempfile.TemporaryDirectory(prefix="mlp-register-") as tmp:
        local = Path(tmp) / Path(artifact_path).name
        try:
            with local.open("wb") as fh:
                fetched = client.download(artifact_root, artifact_path, fh)
            store = ArtifactStore(Path(tmp) / "cache", s3_endpoint_url=s3_endpoint_url)
            uri, digest, _ = store.push(local, destination, model, version)
        except (ClientError, ArtifactError) as exc:
            raise RegistryError(f"artifact {artifact_path}: {exc}") from None
        except Exception as exc:  # boto3: credentials, endpoint, permissions
            raise RegistryError(
                f"artifact {artifact_path}: upload to {destination} failed: {type(exc).__name__}: {exc}"
            ) from None
    if digest != f"sha256:{fetched}":
        raise RegistryError(f"artifact {artifact_path}: digest changed during the copy ({fetched} vs {digest})")

    warnings: list[str] = []
    metrics: dict[str, float] = {}
    for key, value in sorted(run.metrics.items()):
        if math.isfinite(value) and abs(value) < 1.7e308:
            metrics[key] = value
        else:
            warnings.append(f"metric {key} is {value}: not written to the spec")
    lineage: dict[str, str] = {"run": run.id}
    exp_spec = _experiment_spec_for(before.specs, model, experiment_name)
    if exp_spec:
        lineage["experiment"] = exp_spec
    if run.datasets:
        ds = run.datasets[0]
        lineage["dataset"] = _dataset_uri(ds)
        if ds.get("digest"):
            lineage["datasetDigest"] = str(ds["digest"])
    commit = run.tags.get("mlflow.source.git.commit") or run.tags.get("mlp.git.commit")
    if commit:
        lineage["commit"] = commit
    if run.start_time:
        lineage["trainedAt"] = datetime.fromtimestamp(run.start_time / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry: dict[str, Any] = {"version": version, "uri": uri, "digest": digest}
    if metrics:
        entry["metrics"] = metrics
    entry["lineage"] = lineage
    new_text = add_version(original_text, ref.doc, entry, rel)

    base_branch = base or repo.active_branch.name
    start_branch = repo.active_branch.name
    progress(f"writing {rel} on branch {branch}")
    repo.git.checkout("-b", branch, base_branch)
    try:
        spec_file.write_text(new_text, encoding="utf-8")
        after = _load(root)
        if not after.ok:
            raise RegistryError(f"the new version does not validate: {_first_errors(after)}")
        repo.index.add([rel])
        sha = repo.index.commit(
            f"models/{model}: register version {version} from run {run.id}\n\nuri: {uri}\ndigest: {digest}\n"
        ).hexsha
        diff = repo.git.diff(f"{base_branch}..{branch}")
        if push:
            progress(f"pushing {branch} to {remote}")
            try:
                repo.git.push(remote, f"{branch}:{branch}")
            except git.GitCommandError as exc:
                raise RegistryError(f"git push {remote} {branch}: {exc.stderr.strip() or exc}") from None
    except BaseException:
        spec_file.write_text(original_text, encoding="utf-8")
        repo.git.checkout("-f", start_branch)
        repo.git.branch("-D", branch)
        raise
    repo.git.checkout(start_branch)
    result = Registration(
        model, version, uri, digest, rel, branch, base_branch, sha, metrics, lineage, diff, warnings=warnings
    )
    if host is not None and host_repo:
        progress(f"opening a {host.provider} change request on {host_repo}")
        body = (
            f"Adds version {version} of `{model}` from tracking run `{run.id}`.\n\n"
            f"- uri: `{uri}`\n- digest: `{digest}`\n\nOpened by `mlp models register`."
        )
        try:
            cr = host.open_change_request(host_repo, branch, base_branch, f"Register {model} version {version}", body)
            result.pull_number, result.pull_url = cr.number, cr.url
            result.comment = comparison_comment(after.specs, model, version, metrics, run)
            upsert_comment(host, host_repo, cr.number, result.comment, marker=COMMENT_MARKER)
        except HostError as exc:
            raise RegistryError(f"branch {branch} pushed, but the change request failed: {exc}") from None
    return result
