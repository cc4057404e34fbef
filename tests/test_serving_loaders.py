"""Native loaders on real models trained at test time, and batch inference over files (CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlp.serving.batch import BatchError, predict_file
from mlp.serving.codec import Signature
from mlp.serving.loaders import CustomModel, LoadError, NativeModel, load_model


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x, (y == 0).astype(int)


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost_json_and_ubj(tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray], ext: str) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = cancer
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(x, y)
    path = tmp_path / f"model.{ext}"
    model.save_model(str(path))
    labels = load_model("xgboost", path)
    probs = load_model("xgboost", path, proba=True)
    assert isinstance(labels, NativeModel)
    assert isinstance(probs, NativeModel)
    np.testing.assert_array_equal(labels.predict(x[:50]), model.predict(x[:50]))
    np.testing.assert_allclose(probs.predict(x[:50]), model.predict_proba(x[:50])[:, 1], rtol=1e-5)


def test_lightgbm(tmp_path: Path, cancer: tuple[np.ndarray, np.ndarray]) -> None:
    lgb = pytest.importorskip("lightgbm")
    x, y = cancer
    model = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y)
    path = tmp_path / "model.txt"
    model.booster_.save_model(str(path))
    loaded = load_model("lightgbm", path)
    assert isinstance(loaded, NativeModel)
    np.testing.assert_array_equal(loaded.predict(x[:50]), model.predict(x[:50]))


def test_onnx_from_sklearn(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    onx = skl2onnx.convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 4]))])
    path = tmp_path / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    loaded = load_model("onnx", path)
    assert isinstance(loaded, NativeModel) and loaded.input_dtype == np.float32
    assert (loaded.predict(x) == model.predict(x)).mean() > 0.97


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "model.joblib"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(LoadError, match=r"could not load model\.joblib"):
        load_model("sklearn", junk, name="iris")
    with pytest.raises(LoadError, match="no local loader"):
        load_model("tensorflow", junk)
    with pytest.raises(LoadError, match="not importable"):
        load_model("custom", None, model_class="no_such_module_xyz:Model")
    with pytest.raises(LoadError, match="has no class"):
        load_model("custom", None, model_class="json:Nope")
    with pytest.raises(LoadError, match=r"not a kserve\.Model subclass"):
        load_model("custom", None, model_class="json:JSONDecoder")


def test_custom_kserve_model_gets_the_artifact_path(tmp_path: Path) -> None:
    pytest.importorskip("kserve")
    art = tmp_path / "weights.bin"
    art.write_bytes(b"x")
    loaded = load_model("custom", art, name="m", model_class="test_serving_dataplane:SpecExampleModel")
    assert isinstance(loaded, CustomModel)
    assert loaded.instance.model_path == str(art) and loaded.instance.ready


def _iris_repo(tmp_path: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "specs" / "models" / "iris.yaml").is_file():
        pytest.skip("the example repository is not in this checkout")
    import shutil
    import sys

    repo = tmp_path / "platform"
    for name in ("specs", "environments", "templates"):
        if (root / name).is_dir():
            shutil.copytree(root / name, repo / name)
    sys.path.insert(0, str(root / "scripts"))
    try:
        import train_examples
    finally:
        sys.path.pop(0)
    assert train_examples.main([str(repo)]) == 0
    return repo


@pytest.mark.timeout(120)
def test_mlp_predict_streams_csv_parquet_jsonl(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from sklearn.datasets import load_iris

    from mlp.cli.main import cli

    repo = _iris_repo(tmp_path)
    frame = load_iris(as_frame=True).frame.drop(columns="target")
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    big = frame.sample(n=25_000, replace=True, random_state=0)
    big.to_csv(tmp_path / "in.csv", index=False)
    big.to_parquet(tmp_path / "in.parquet")
    big.head(300).to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "predict",
            str(repo),
            "--model",
            "iris",
            "--env",
            "dev",
            "--input",
            str(tmp_path / "in.csv"),
            "--output-file",
            str(tmp_path / "out.parquet"),
            "--chunk-rows",
            "4000",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["rows"] == 25_000 and summary["version"] == 1
    assert res.output.count("rows/s") >= 6  # progress per chunk on stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 25_000 and table.column_names[-1] == "species"
    res = runner.invoke(
        cli,
        [
            "predict",
            str(repo),
            "--model",
            "iris",
            "--input",
            str(tmp_path / "in.parquet"),
            "--output-file",
            str(tmp_path / "out.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "iris v2: 25,000 rows" in res.output  # without --env: the newest version
    res = runner.invoke(
        cli,
        [
            "predict",
            str(repo),
            "--model",
            "iris",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output-file",
            str(tmp_path / "out.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert set(first) == {"sepal_length", "sepal_width", "petal_length", "petal_width", "species"}
    (tmp_path / "bad.csv").write_text("sepal_length,petal_width\n1,2\n")
    res = runner.invoke(
        cli,
        [
            "predict",
            str(repo),
            "--model",
            "iris",
            "--input",
            str(tmp_path / "bad.csv"),
            "--output-file",
            str(tmp_path / "o.csv"),
        ],
    )
    assert res.exit_code == 2 and "missing input column" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        cli,
        [
            "predict",
            str(repo),
            "--model",
            "iris",
            "--version",
            "7",
            "--input",
            str(tmp_path / "in.csv"),
            "--output-file",
            str(tmp_path / "o.csv"),
        ],
    )
    assert res.exit_code == 2 and "Model/iris: no version 7" in res.output


def test_predict_file_refuses_unknown_types(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    sig = Signature.from_spec({"inputs": [{"name": "a", "type": "float"}], "outputs": [{"name": "y"}]})
    with pytest.raises(BatchError, match="unknown file type"):
        predict_file(lambda x: x[:, 0], sig, tmp_path / "in.csv", tmp_path / "out.xlsx")
    assert predict_file(lambda x: x[:, 0] * 2, sig, tmp_path / "in.csv", tmp_path / "out.csv") == 1
    assert (tmp_path / "out.csv").read_text().splitlines()[1] == "1,2"


def test_sklearn_linear_fast_path_matches_sklearn_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import joblib
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xi, yi = load_iris(return_X_y=True)
    xb, yb = load_breast_cancer(return_X_y=True)
    xb = StandardScaler().fit_transform(xb)  # so lbfgs converges in a few iterations
    cases = [
        (LogisticRegression(max_iter=1000).fit(xi, yi), xi, False),
        (LogisticRegression(max_iter=1000).fit(xb, yb), xb, False),
        (LogisticRegression(max_iter=1000).fit(xb, yb), xb, True),
        (LinearRegression().fit(xi[:, :3], xi[:, 3]), xi[:, :3], False),
    ]
    for i, (est, x, proba) in enumerate(cases):
        path = tmp_path / f"m{i}.joblib"
        joblib.dump(est, path)
        fast = load_model("sklearn", path, proba=proba)
        assert isinstance(fast, NativeModel)
        assert getattr(fast.impl, "__name__", "") == "fn", f"case {i} did not take the fast path"
        want = est.predict_proba(x)[:, 1] if proba else est.predict(x)
        if proba or want.dtype.kind == "f":
            np.testing.assert_allclose(fast.predict(x), want, rtol=1e-9)
        else:
            np.testing.assert_array_equal(fast.predict(x), want)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(xi, yi)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    slow = load_model("sklearn", tmp_path / "pipe.joblib")
    assert isinstance(slow, NativeModel) and getattr(slow.impl, "__name__", "") == "predict"
    monkeypatch.setenv("MLP_SKLEARN_FAST_PATH", "0")
    off = load_model("sklearn", tmp_path / "m0.joblib")
    assert isinstance(off, NativeModel) and getattr(off.impl, "__name__", "") == "predict"
