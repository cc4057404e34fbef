"""What a training run was made from: Git commit, installed packages, datasets with digests.

Called from training code next to the unmodified `mlflow` client:

    from mlp.tracking.provenance import log_provenance
    with mlflow.start_run():
        log_provenance(datasets={"iris": "data/iris.csv"})

It sets the tags `mlp.git.commit` / `mlp.git.dirty` (the repository around the working
directory), logs `environment/packages.txt` (every installed distribution, `name==version`)
with its sha256 in `mlp.packages.sha256`, and logs each dataset as an MLflow dataset input
whose digest is the sha256 of the file, so `mlp models register` can write them into lineage.
"""

from __future__ import annotations

import hashlib
import tempfile
from importlib.metadata import distributions
from pathlib import Path
from typing import Any


def installed_packages() -> str:
    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


def git_commit(path: Path | None = None) -> tuple[str, bool] | None:
    import git

    try:
        repo = git.Repo(path or Path.cwd(), search_parent_directories=True)
        return repo.head.commit.hexsha, repo.is_dirty(untracked_files=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def log_provenance(datasets: dict[str, str] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Record commit, packages and datasets on the active run (or `run_id`); returns what was logged."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id  # type: ignore[union-attr]
    logged: dict[str, Any] = {}
    commit = git_commit()
    if commit is not None:
        client.set_tag(run_id, "mlp.git.commit", commit[0])
        client.set_tag(run_id, "mlp.git.dirty", str(commit[1]).lower())
        logged["commit"] = commit[0]
    packages = installed_packages()
    digest = hashlib.sha256(packages.encode()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packages.txt"
        path.write_text(packages)
        client.log_artifact(run_id, str(path), "environment")
    client.set_tag(run_id, "mlp.packages.sha256", digest)
    logged["packages_sha256"] = digest
    inputs = []
    for name, location in (datasets or {}).items():
        local = Path(location)
        digest_ds = file_digest(local) if local.is_file() else hashlib.sha256(location.encode()).hexdigest()
        uri = local.resolve().as_uri() if local.is_file() else location
        inputs.append(
            DatasetInput(
                Dataset(
                    name=name,
                    digest=f"sha256:{digest_ds}",
                    source_type="local" if local.is_file() else "external",
                    source=uri,
                ),
                [InputTag("mlflow.data.context", "training")],
            )
        )
        logged.setdefault("datasets", {})[name] = {"uri": uri, "digest": f"sha256:{digest_ds}"}
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return logged
