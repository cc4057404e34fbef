"""`mlp up` end to end on a copy of the example repository: the README command, live swaps, refusals."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlp.serving.testing import client

ROOT = Path(__file__).resolve().parents[1]
ROW = [6.8, 2.8, 4.8, 1.4]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if not (ROOT / "environments" / "dev.yaml").is_file():
        pytest.skip("the example repository (environments/dev.yaml) is not in this checkout")
    dst = tmp_path / "platform"
    for name in ("specs", "environments", "templates"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dst / name)
    return dst


@pytest.mark.timeout(120)
def test_readme_demo_check_brings_the_example_up_and_answers(repo: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--check", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert res.returncode == 0, res.stderr
    assert re.search(r'-> \{"predictions": \[\d\]\} \(answered by version \d\)', res.stdout), res.stdout
    # the trainer wrote the artifacts into the mirror and the digests into the specs
    assert (repo / "artifacts" / "mlp-models" / "iris" / "1" / "model.joblib").is_file()
    before = (ROOT / "specs" / "models" / "iris.yaml").read_text()
    after = (repo / "specs" / "models" / "iris.yaml").read_text()
    # digests are rewritten in place when this machine's artifacts differ; nothing else changes
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert all("digest: sha256:" in a and "digest: sha256:" in b for a, b in changed)
    assert before.splitlines()[0] == after.splitlines()[0]  # the schema comment survives
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_examples.py"), str(repo), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout


class UpProcess:
    def __init__(self, repo: Path, state: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlp.cli.main",
                "up",
                str(repo),
                "--env",
                "dev",
                "--port",
                "0",
                "--state-dir",
                str(state),
                "--interval",
                "0.2",
                "--format",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"mlp up exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.info = json.loads(line)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def up(repo: Path, tmp_path: Path) -> Iterator[UpProcess]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_examples
    finally:
        sys.path.pop(0)
    assert train_examples.main([str(repo)]) == 0
    proc = UpProcess(repo, tmp_path / "state")
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()


def _set_iris(repo: Path, text: str) -> None:
    env = repo / "environments" / "dev.yaml"
    new = re.sub(r"(\n    iris:\n)(      .*\n)+", r"\g<1>" + text, env.read_text())
    env.write_text(new)


@pytest.mark.timeout(120)
def test_editing_dev_yaml_swaps_versions_under_load_with_zero_failures(up: UpProcess, repo: Path) -> None:
    url = up.info["url"]
    assert up.info["curl"].endswith("/v1/models/iris:predict")
    stop = threading.Event()
    seen: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with client(url) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
                    with lock:
                        if r.status_code == 200:
                            seen[r.headers["x-mlp-model-version"]] += 1
                        else:
                            failures.append(f"{r.status_code} {r.text}")
                except Exception as exc:
                    with lock:
                        failures.append(repr(exc))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # the canary split serves both versions before the edit (on a busy machine the first answers
        # can take a while: wait for them rather than for a fixed time)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (seen["1"] and seen["2"]):
            time.sleep(0.05)
        _set_iris(repo, "      version: 2\n")  # promote: v2 becomes the only stable version
        deadline = time.monotonic() + 20
        with client(url) as c:
            while time.monotonic() < deadline:
                versions = {
                    c.post("/v1/models/iris:predict", json={"instances": [ROW]}).headers["x-mlp-model-version"]
                    for _ in range(20)
                }
                if versions == {"2"}:
                    break
                time.sleep(0.1)
            assert versions == {"2"}
        # a revision that does not validate changes nothing: v2 keeps serving
        _set_iris(repo, "      version: 9\n")
        time.sleep(1.0)
        with client(url) as c:
            assert {
                c.post("/v1/models/iris:predict", json={"instances": [ROW]}).headers["x-mlp-model-version"]
                for _ in range(20)
            } == {"2"}
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert seen["1"] > 0 and seen["2"] > 0
    assert up.stop() == 0
    log = "".join(up.stderr)
    assert "refused, still serving the last good state" in log
    assert "version 1 drained and unloaded" in log


@pytest.mark.timeout(60)
def test_a_second_mlp_up_on_the_same_state_folder_is_refused(up: UpProcess, repo: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mlp.cli.main", "up", str(repo), "--port", "0", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert res.returncode == 2 and "state folder in use by another mlp up" in res.stderr
    with client(up.info["url"]) as c:
        assert c.post("/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200


@pytest.mark.timeout(60)
def test_mlp_up_refuses_a_kubernetes_environment_with_one_line(repo: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "up",
            str(repo),
            "--env",
            "prod",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert res.returncode == 1
    assert "Environment/prod: target kind is 'kubernetes'" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.timeout(120)
def test_restart_serves_the_saved_state_even_when_the_repository_is_broken(
    up: UpProcess, repo: Path, tmp_path: Path
) -> None:
    with client(up.info["url"]) as c:
        assert c.post("/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200
    assert up.stop() == 0
    (repo / "environments" / "dev.yaml").write_text("this: [is not, valid\n")
    again = UpProcess(repo, tmp_path / "state")
    try:
        with client(again.info["url"]) as c:
            r = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
            assert r.status_code == 200 and r.json() == {"predictions": [1]}
            assert c.post("/v1/models/breast-cancer:predict", json={"instances": [[1.0] * 30]}).status_code == 200
    finally:
        assert again.stop() == 0
    assert "serving the state restored from" in "".join(again.stderr)


@pytest.mark.timeout(120)
def test_the_printed_curl_line_returns_a_prediction(repo: Path, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_examples
    finally:
        sys.path.pop(0)
    assert train_examples.main([str(repo)]) == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "up",
            str(repo),
            "--env",
            "dev",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("curl "):
                break
        curl = lines[-1].strip()
        assert curl.startswith("curl ") and "/v1/models/iris:predict" in curl, "".join(lines)
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout) == {"predictions": [1]}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
