"""Model loaders: turn a verified artifact file into something that predicts.

Native loaders (scikit-learn joblib, XGBoost JSON/UBJ, LightGBM text, ONNX through
onnxruntime) expose `predict(X: ndarray[n, features]) -> ndarray[n, ...]` on a whole batch,
which is what the micro-batcher needs. A `kserve.Model` subclass named by `modelClass`
(`package.module:Class`) is wrapped unchanged: it receives v1 dicts and v2 `InferRequest`s
exactly as under KServe's ModelServer, and its `predict` may be sync or async.

Each framework library is imported only when a model of that framework is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class LoadError(Exception):
    """A model could not be loaded; the message is one clear line."""


@dataclass
class NativeModel:
    """A model whose predict takes a 2-D numpy batch."""

    framework: str
    impl: Any
    input_dtype: Any = np.float64
    n_features: int | None = None  # what the artifact expects, when it says

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.impl(x))


@dataclass
class CustomModel:
    """A kserve.Model subclass running as it would under KServe."""

    framework: str
    instance: Any

    async def infer(self, payload: Any, headers: dict[str, str]) -> Any:
        model = self.instance
        pre = model.preprocess(payload, headers)
        if inspect.isawaitable(pre):
            pre = await pre
        out = model.predict(pre, headers)
        if inspect.isawaitable(out):
            out = await out
        post = model.postprocess(out, headers)
        if inspect.isawaitable(post):
            post = await post
        return post


LoadedModel = NativeModel | CustomModel


def load_model(
    framework: str,
    path: Path | None,
    *,
    name: str = "model",
    model_class: str | None = None,
    fmt: str | None = None,
    proba: bool = False,
) -> LoadedModel:
    """Load one version's artifact; raise LoadError with a clear reason.

    `proba`: the signature's output is a float, so a classifier answers with the positive
    class probability (binary) instead of the class label.
    """
    try:
        if model_class:
            return _load_custom(model_class, name, path)
        if path is None:
            raise LoadError(f"{name}: no artifact to load")
        loader = _LOADERS.get(framework)
        if loader is None:
            raise LoadError(f"{name}: framework {framework!r} has no local loader (use framework custom + modelClass)")
        return loader(path, proba)
    except LoadError:
        raise
    except ModuleNotFoundError as exc:
        raise LoadError(f"{name}: framework {framework!r} needs the package {exc.name!r}, not installed") from None
    except Exception as exc:
        raise LoadError(
            f"{name}: could not load {path.name if path else model_class}: {type(exc).__name__}: {exc}"
        ) from None


def _load_sklearn(path: Path, proba: bool) -> NativeModel:
    import joblib

    est = joblib.load(path)
    if not hasattr(est, "predict"):
        raise LoadError(f"{path.name}: the joblib object has no predict()")
    if proba and hasattr(est, "predict_proba") and len(getattr(est, "classes_", ())) == 2:

        def positive(x: np.ndarray) -> np.ndarray:
            return np.asarray(est.predict_proba(x))[:, 1]

        return NativeModel(
            "sklearn",
            _linear_fast_path(est, positive, proba=True) or positive,
            n_features=getattr(est, "n_features_in_", None),
        )
    return NativeModel(
        "sklearn",
        _linear_fast_path(est, est.predict, proba=False) or est.predict,
        n_features=getattr(est, "n_features_in_", None),
    )


def _linear_fast_path(est: Any, reference: Any, *, proba: bool) -> Any:
    """The same answers as a fitted linear model's predict, without sklearn's per-call checks.

    scikit-learn validates its input on every call (~100 us), which dominates a one-row
    prediction; the data plane has already checked shape, dtype and finiteness. Only plain
    linear classifiers and regressors qualify (a Pipeline or anything else keeps sklearn's
    predict), and the fast path is used only if it reproduces sklearn exactly on probe rows.
    Set MLP_SKLEARN_FAST_PATH=0 to turn it off.
    """
    import os

    if os.environ.get("MLP_SKLEARN_FAST_PATH", "1") == "0":
        return None
    try:
        from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
        from sklearn.svm import LinearSVC
    except ImportError:
        return None
    kind = type(est)
    coef = getattr(est, "coef_", None)
    intercept = getattr(est, "intercept_", None)
    if coef is None or intercept is None or getattr(est, "n_features_in_", None) is None:
        return None
    coef_t = np.ascontiguousarray(np.asarray(coef, dtype=np.float64).T)
    b = np.asarray(intercept, dtype=np.float64)
    fn: Any = None
    if kind in (LogisticRegression, RidgeClassifier, SGDClassifier, LinearSVC):
        classes = np.asarray(est.classes_)
        if proba:
            if kind is not LogisticRegression or coef_t.shape[1] != 1:
                return None

            def fn(x: np.ndarray) -> np.ndarray:
                return 1.0 / (1.0 + np.exp(-(x @ coef_t + b)[:, 0]))
        elif coef_t.shape[1] == 1:

            def fn(x: np.ndarray) -> np.ndarray:
                return classes[((x @ coef_t + b)[:, 0] > 0).astype(np.intp)]
        else:

            def fn(x: np.ndarray) -> np.ndarray:
                return classes[np.argmax(x @ coef_t + b, axis=1)]
    elif kind in (LinearRegression, Ridge) and not proba:

        def fn(x: np.ndarray) -> np.ndarray:
            out = x @ coef_t + b
            return out[:, 0] if coef_t.ndim == 2 and coef_t.shape[1] == 1 and np.ndim(coef) == 1 else out

    if fn is None:
        return None
    rng = np.random.default_rng(0)
    probe = np.vstack([np.zeros((1, est.n_features_in_)), rng.normal(0, 3, (64, est.n_features_in_))])
    try:
        if proba:
            same = np.allclose(fn(probe), reference(probe), rtol=1e-9, atol=1e-12)
        else:
            same = np.array_equal(fn(probe), np.asarray(reference(probe)))
    except Exception:
        return None
    return fn if same else None


def _load_xgboost(path: Path, proba: bool) -> NativeModel:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(path))
    objective = _xgb_objective(booster)
    n = booster.num_features()
    if objective.startswith("binary:") and proba:
        return NativeModel("xgboost", booster.inplace_predict, n_features=n)
    if objective.startswith("binary:"):

        def binary(x: np.ndarray) -> np.ndarray:
            return (booster.inplace_predict(x) > 0.5).astype(np.int64)

        return NativeModel("xgboost", binary, n_features=n)
    if objective.startswith("multi:softprob"):

        def softprob(x: np.ndarray) -> np.ndarray:
            return np.argmax(booster.inplace_predict(x), axis=1).astype(np.int64)

        return NativeModel("xgboost", softprob, n_features=n)
    return NativeModel("xgboost", booster.inplace_predict, n_features=n)


def _xgb_objective(booster: Any) -> str:
    import json

    try:
        config = json.loads(booster.save_config())
        return str(config["learner"]["objective"]["name"])
    except (KeyError, ValueError):
        return ""


def _load_lightgbm(path: Path, proba: bool) -> NativeModel:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(path))
    objective = str(booster.params.get("objective", ""))
    n = booster.num_feature()
    if objective.startswith("binary") and proba:
        return NativeModel("lightgbm", booster.predict, n_features=n)
    if objective.startswith("binary"):

        def binary(x: np.ndarray) -> np.ndarray:
            return (np.asarray(booster.predict(x)) > 0.5).astype(np.int64)

        return NativeModel("lightgbm", binary, n_features=n)
    if objective.startswith(("multiclass", "softmax")):

        def multi(x: np.ndarray) -> np.ndarray:
            return np.argmax(np.asarray(booster.predict(x)), axis=1).astype(np.int64)

        return NativeModel("lightgbm", multi, n_features=n)
    return NativeModel("lightgbm", booster.predict, n_features=n)


def _load_onnx(path: Path, proba: bool) -> NativeModel:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the server is one event loop; don't fight it for cores
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    input_name = first.name
    output_name = session.get_outputs()[0].name
    shape = list(first.shape or [])
    n = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output_name], {input_name: x.astype(np.float32, copy=False)})[0])

    return NativeModel("onnx", run, input_dtype=np.float32, n_features=n)


def _load_custom(model_class: str, name: str, path: Path | None) -> CustomModel:
    module_name, _, class_name = model_class.partition(":")
    if not module_name or not class_name:
        raise LoadError(f"{name}: modelClass {model_class!r} must be module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LoadError(
            f"{name}: modelClass module {module_name!r} not importable ({exc.name} missing; sys.path[0]={sys.path[0]!r})"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LoadError(f"{name}: module {module_name!r} has no class {class_name!r}")
    try:
        import kserve

        if not (isinstance(cls, type) and issubclass(cls, kserve.Model)):
            raise LoadError(f"{name}: {model_class} is not a kserve.Model subclass")
    except ModuleNotFoundError:
        pass  # without kserve installed any class with predict() is accepted
    instance = cls(name)
    if path is not None:
        # Contract: the verified artifact's local path is in `model_path` before load().
        instance.model_path = str(path)
    loaded = instance.load()
    if inspect.isawaitable(loaded):
        raise LoadError(f"{name}: async load() is not supported")
    return CustomModel("custom", instance)


_LOADERS = {
    "sklearn": _load_sklearn,
    "xgboost": _load_xgboost,
    "lightgbm": _load_lightgbm,
    "onnx": _load_onnx,
}
