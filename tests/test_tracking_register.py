"""End to end: train with the mlflow client, register the run, a branch and a pull request appear.

Real parts: `mlp tracking serve`, the mlflow client training on scikit-learn's iris, Git
repositories in a temporary folder (a bare one as `origin`), the GitHub stand-in over HTTP.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import git
import joblib
import pytest
from click.testing import CliRunner
from standins.github_api import GitHubStandIn, serve
from trackingutil import REPO_ROOT, Server, client_env, tracking_server

from mlp.cli.main import cli

pytest.importorskip("mlflow", reason="the mlflow client is in the dev extra")
pytestmark = pytest.mark.timeout(300)

TRAIN = textwrap.dedent(
    """
    import sys
    import mlflow, pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    mlflow.set_experiment("iris-tuning")
    frame = load_iris(as_frame=True).frame
    X, y = frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    with mlflow.start_run(run_name="lr-c3") as run:
        mlflow.log_input(mlflow.data.from_pandas(frame, source="sklearn.datasets.load_iris", name="iris"), context="training")
        mlflow.log_params({"C": 3.0, "max_iter": 500})
        model = LogisticRegression(C=3.0, max_iter=500).fit(Xtr, ytr)
        pred = model.predict(Xte)
        mlflow.log_metrics({"accuracy": accuracy_score(yte, pred), "f1_macro": f1_score(yte, pred, average="macro")})
        mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    print(run.info.run_id)
    """
)


@pytest.fixture
def platform(tmp_path: Path) -> tuple[Path, Path]:
    """A working clone of the example platform repository and its bare `origin`."""
    work = tmp_path / "platform"
    for folder in ("specs", "environments", "templates"):
        shutil.copytree(REPO_ROOT / folder, work / folder)
    repo = git.Repo.init(work, initial_branch="main")
    repo.git.add("-A")
    repo.index.commit("platform")
    bare = tmp_path / "origin.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    repo.create_remote("origin", str(bare))
    repo.git.push("origin", "main")
    return work, bare


@pytest.fixture
def github(platform: tuple[Path, Path]) -> Iterator[tuple[GitHubStandIn, str]]:
    standin = GitHubStandIn({"t-bot": "mlp-bot"})
    standin.add_repo("acme/platform", platform[1])
    with serve(standin.app) as url:
        yield standin, url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with tracking_server(tmp_path / "tracking") as s:
        yield s


def _train(server: Server) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN], env=client_env(server.url), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_train_register_branch_validates_and_pull_request_has_metrics(
    tmp_path: Path, platform: tuple[Path, Path], github: tuple[GitHubStandIn, str], server: Server
) -> None:
    work, bare = platform
    standin, gh_url = github
    run_id = _train(server)
    store = tmp_path / "models"
    before = (work / "specs" / "models" / "iris.yaml").read_text()

    result = CliRunner().invoke(
        cli,
        [
            "models",
            "register",
            "--run",
            run_id,
            "--model",
            "iris",
            "--to",
            store.as_uri(),
            "--repo",
            str(work),
            "--tracking-uri",
            server.url,
            "--github-repo",
            "acme/platform",
            "--github-url",
            gh_url,
            "-o",
            "json",
        ],
        env={"GITHUB_TOKEN": "t-bot"},
    )
    assert result.exit_code == 0, result.output
    # the checkout is back where it was, unchanged
    repo = git.Repo(work)
    assert repo.active_branch.name == "main" and (work / "specs" / "models" / "iris.yaml").read_text() == before

    # the branch reached origin with exactly one added version, everything else byte for byte
    origin = git.Repo(bare)
    assert "mlp/register/iris-v3" in [h.name for h in origin.heads]
    diff = origin.git.diff("main", "mlp/register/iris-v3", "--", "specs/models/iris.yaml")
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == []
    assert origin.git.diff("main", "mlp/register/iris-v3", "--name-only").split() == ["specs/models/iris.yaml"]
    artifact = store / "iris" / "3" / "model.pkl"
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    text = "\n".join(added)
    assert added[0] == "    - version: 3"
    assert f"      uri: {artifact.as_uri()}" in added and f"      digest: sha256:{digest}" in added
    assert "accuracy:" in text and "f1_macro:" in text
    assert (
        f"run: {run_id}" in text and "experiment: iris-tuning" in text and "dataset: sklearn.datasets.load_iris" in text
    )
    assert "datasetDigest:" in text and "trainedAt:" in text

    # the artifact is the trained model, loadable by the runtime's scikit-learn loader
    from sklearn.datasets import load_iris

    X, _ = load_iris(return_X_y=True)
    assert joblib.load(artifact).predict(X[:1]).shape == (1,)

    # `mlp validate` passes on a clone of the branch
    clone = git.Repo.clone_from(str(bare), tmp_path / "check", branch="mlp/register/iris-v3")
    validate = CliRunner().invoke(cli, ["validate", str(clone.working_dir)])
    assert validate.exit_code == 0, validate.output

    # the GitHub stand-in got the pull request in GitHub's shape, and one comment with the metrics
    created = standin.calls("POST", "/repos/acme/platform/pulls")
    assert len(created) == 1
    assert created[0].body["head"] == "mlp/register/iris-v3" and created[0].body["base"] == "main"
    assert created[0].body["title"] == "Register iris version 3" and digest in created[0].body["body"]
    pr = standin.repos["acme/platform"].pulls[1]
    assert pr["head"]["sha"] == origin.commit("mlp/register/iris-v3").hexsha
    comments = standin.repos["acme/platform"].comments[1]
    assert len(comments) == 1
    body = comments[0]["body"]
    assert "| metric | candidate v3 | dev v1 (stable) | dev v2 (canary) | prod v1 (stable) |" in body
    assert "| `accuracy` |" in body and "0.953" in body and "0.973" in body  # the deployed versions' accuracy
    assert "| prod | `accuracy` >= 0.9, regression <= 0.01 |" in body


def test_register_refuses_a_spec_with_a_syntax_error_and_pushes_nothing(
    tmp_path: Path, platform: tuple[Path, Path], github: tuple[GitHubStandIn, str], server: Server
) -> None:
    work, bare = platform
    standin, gh_url = github
    spec = work / "specs" / "models" / "iris.yaml"
    spec.write_text(spec.read_text().replace("  framework: sklearn", "  framework: [sklearn"))
    repo = git.Repo(work)
    repo.git.commit("-am", "broken spec")
    run_id = _train(server)
    result = CliRunner().invoke(
        cli,
        [
            "models",
            "register",
            "--run",
            run_id,
            "--model",
            "iris",
            "--to",
            (tmp_path / "models").as_uri(),
            "--repo",
            str(work),
            "--tracking-uri",
            server.url,
            "--github-repo",
            "acme/platform",
            "--github-url",
            gh_url,
        ],
        env={"GITHUB_TOKEN": "t-bot"},
    )
    assert result.exit_code == 2
    assert "specs/models/iris.yaml:" in result.output and "Traceback" not in result.output
    assert [h.name for h in repo.heads] == ["main"] and [h.name for h in git.Repo(bare).heads] == ["main"]
    assert standin.calls("POST") == []
    assert not (tmp_path / "models").exists()


def test_register_unknown_run_is_one_clear_error(tmp_path: Path, platform: tuple[Path, Path], server: Server) -> None:
    work, _ = platform
    result = CliRunner().invoke(
        cli,
        [
            "models",
            "register",
            "--run",
            "0" * 32,
            "--model",
            "iris",
            "--to",
            (tmp_path / "m").as_uri(),
            "--repo",
            str(work),
            "--tracking-uri",
            server.url,
            "--no-push",
        ],
    )
    assert result.exit_code == 2
    assert "RESOURCE_DOES_NOT_EXIST" in result.output and "Traceback" not in result.output


def test_register_opens_a_gitlab_merge_request(tmp_path: Path, platform: tuple[Path, Path], server: Server) -> None:
    import httpx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from standins.gitlab_api import GitLabStandIn

    work, bare = platform
    api = f"{server.url}/api/2.0/mlflow"
    run = httpx.post(f"{api}/runs/create", json={"experiment_id": "0", "run_name": "gl"}).json()["run"]["info"]
    httpx.post(
        f"{api}/runs/log-batch",
        json={"run_id": run["run_id"], "metrics": [{"key": "accuracy", "value": 0.96, "timestamp": 1}]},
    )
    X, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), tmp_path / "model.pkl")
    art = run["artifact_uri"].split(":", 1)[1].strip("/")
    url = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{art}/model/model.pkl"
    assert httpx.put(url, content=(tmp_path / "model.pkl").read_bytes()).status_code == 200
    standin = GitLabStandIn({"t-bot": "mlp-bot"})
    standin.add_project("acme/platform", bare)
    with serve(standin.app) as gl_url:
        result = CliRunner().invoke(
            cli,
            [
                "models",
                "register",
                "--run",
                run["run_id"],
                "--model",
                "iris",
                "--to",
                (tmp_path / "store").as_uri(),
                "--repo",
                str(work),
                "--tracking-uri",
                server.url,
                "--gitlab-project",
                "acme/platform",
                "--gitlab-url",
                f"{gl_url}/api/v4",
            ],
            env={"GITLAB_TOKEN": "t-bot"},
        )
    assert result.exit_code == 0, result.output
    (mr,) = [c.body for c in standin.calls("POST") if c.path.endswith("/merge_requests")]
    assert mr["source_branch"] == "mlp/register/iris-v3" and mr["target_branch"] == "main"
    notes = standin.projects["acme/platform"].notes[1]
    assert len(notes) == 1 and "| `accuracy` | 0.96 |" in notes[0]["body"]
