"""Request decoding and response encoding for KServe v1 and Open Inference Protocol v2.

Decoding turns a parsed JSON body into one 2-D numpy batch `[rows, features]` checked
against the model's signature (width, numeric datatypes); every problem raises
`BadRequest` with a message a caller can act on, which the data plane turns into a 400.
Encoding goes straight from numpy to JSON bytes with orjson (no `tolist()` copies).
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

V2_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NUMERIC_SIG_TYPES = {"float", "double", "int", "long", "bool"}
_NP_TO_V2 = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}
JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(Exception):
    """The request is malformed or does not fit the model; becomes HTTP 400 (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Signature:
    """What a native model accepts: named input columns in order, and its output names."""

    inputs: tuple[str, ...]
    width: int | None  # number of feature columns; None when a shape is variable
    numeric: bool
    outputs: tuple[str, ...]
    input_dtype: Any = np.float64
    accepts_bool: bool = False  # an input is declared `bool`: true/false are values, not errors

    @classmethod
    def from_spec(cls, sig: dict[str, Any] | None, input_dtype: Any = np.float64) -> Signature:
        sig = sig or {}
        inputs = sig.get("inputs") or []
        outputs = sig.get("outputs") or [{"name": "predict"}]
        width: int | None = 0
        for field in inputs:
            shape = field.get("shape") or [1]
            if any(d < 0 for d in shape):
                width = None
                break
            assert width is not None
            width += math.prod(shape)
        if not inputs:
            width = None
        numeric = all((f.get("type") or "float") in NUMERIC_SIG_TYPES for f in inputs)
        return cls(
            tuple(f["name"] for f in inputs),
            width,
            numeric,
            tuple(o["name"] for o in outputs),
            input_dtype,
            any(f.get("type") == "bool" for f in inputs),
        )


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


def _contains_bool(data: Any) -> bool:
    """True when a JSON value holds `true`/`false` anywhere (numpy would read them as 1 and 0)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            return True
        if type(item) is list:
            if bool in set(map(type, item)):
                return True
            stack.extend(x for x in item if type(x) in (list, dict))
        elif type(item) is dict:
            stack.extend(item.values())
    return False


def _maybe_bool(raw: bytes | None) -> bool:
    # The exact walk costs a pass over the data in Python: only pay it when the raw JSON could
    # hold a boolean at all (no raw body given: always check).
    return raw is None or b"true" in raw or b"false" in raw


def _as_batch(sig: Signature, data: Any, what: str, raw: bytes | None = None) -> np.ndarray:
    if sig.numeric and not sig.accepts_bool and _maybe_bool(raw) and _contains_bool(data):
        raise BadRequest(f"{what}: expected numbers, got booleans (true/false)")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"{what}: rows have different lengths (ragged array)") from None
    if arr.dtype == object:
        raise BadRequest(f"{what}: rows have different lengths or mixed types")
    if sig.numeric and arr.dtype.kind not in "biuf":
        raise BadRequest(f"{what}: expected numbers, got {(arr.dtype.kind == 'U' and 'strings') or arr.dtype}")
    return arr


def _check_width(sig: Signature, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.size == 0:
        raise BadRequest(f"{what}: the batch is empty")
    if arr.ndim != 2:
        raise BadRequest(
            f"{what}: expected a 2-D batch [rows, {sig.width or 'features'}], got {arr.ndim}-D shape {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise BadRequest(f"{what}: the batch is empty")
    if sig.width is not None and arr.shape[1] != sig.width:
        raise BadRequest(f"{what}: expected {sig.width} features per row ({', '.join(sig.inputs)}), got {arr.shape[1]}")
    if sig.numeric:
        arr = arr.astype(sig.input_dtype, copy=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadRequest(f"{what}: NaN or infinite values are not accepted")
    return arr


def decode_v1(sig: Signature, body: Any, raw: bytes | None = None) -> np.ndarray:
    """`{"instances": [[...], ...]}` (or `"inputs"`), rows as lists or as {name: value} objects."""
    if not isinstance(body, dict):
        raise BadRequest('v1 body must be a JSON object with "instances"')
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list):
        raise BadRequest('v1 body needs "instances": a list of rows')
    if instances and isinstance(instances[0], dict):
        if not sig.inputs:
            raise BadRequest("this model has no named inputs; send rows as lists")
        try:
            instances = [[row[name] for name in sig.inputs] for row in instances]
        except KeyError as exc:
            raise BadRequest(f"instances: missing input {exc.args[0]!r} (expected {', '.join(sig.inputs)})") from None
        except TypeError:
            raise BadRequest("instances: every row must be an object when the first one is") from None
    return _check_width(sig, _as_batch(sig, instances, "instances", raw), "instances")


def decode_v2(sig: Signature, body: Any, raw: bytes | None = None) -> np.ndarray:
    """OIP inputs: one tensor `[rows, features]`, or one `[rows]` tensor per signature input."""
    if not isinstance(body, dict):
        raise BadRequest('v2 body must be a JSON object with "inputs"')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('v2 body needs "inputs": a non-empty list of tensors')
    tensors = [_v2_tensor(sig, t, i, _maybe_bool(raw)) for i, t in enumerate(inputs)]
    if len(tensors) == 1:
        name, arr = tensors[0]
        if arr.ndim == 1 and sig.width == 1:
            arr = arr.reshape(-1, 1)
        return _check_width(sig, arr, f"inputs[{name}]")
    by_name = dict(tensors)
    if sig.inputs and set(by_name) == set(sig.inputs):
        cols = [by_name[n].reshape(by_name[n].shape[0], -1) for n in sig.inputs]
    else:
        cols = [a.reshape(a.shape[0], -1) for _, a in tensors]
    rows = {c.shape[0] for c in cols}
    if len(rows) != 1:
        raise BadRequest(f"inputs: tensors disagree on the number of rows ({sorted(rows)})")
    return _check_width(sig, np.concatenate(cols, axis=1), "inputs")


def _v2_tensor(sig: Signature, t: Any, i: int, maybe_bool: bool = True) -> tuple[str, np.ndarray]:
    if not isinstance(t, dict):
        raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
    name = t.get("name")
    shape = t.get("shape")
    datatype = t.get("datatype")
    data = t.get("data")
    if not isinstance(name, str):
        raise BadRequest(f"inputs[{i}].name must be a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"inputs[{name}].shape must be a list of non-negative integers")
    if datatype == "BYTES":
        if sig.numeric:
            raise BadRequest(f"inputs[{name}]: datatype BYTES does not fit this model's numeric inputs")
        dtype: Any = object
    elif datatype in V2_DTYPES:
        dtype = V2_DTYPES[datatype]
    else:
        raise BadRequest(f"inputs[{name}].datatype {datatype!r} is not an Open Inference Protocol datatype")
    if data is None:
        raise BadRequest(f"inputs[{name}].data is missing")
    if datatype != "BOOL" and maybe_bool and _contains_bool(data):
        raise BadRequest(f"inputs[{name}].data holds booleans (true/false), not {datatype}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"inputs[{name}].data is ragged") from None
    if dtype is not object and arr.dtype.kind not in "biuf":
        raise BadRequest(
            f"inputs[{name}].data has {(arr.dtype.kind == 'U' and 'strings') or 'mixed values'}, not {datatype}"
        )
    if arr.size != math.prod(shape):
        raise BadRequest(f"inputs[{name}]: data has {arr.size} elements, shape {shape} needs {math.prod(shape)}")
    if dtype is not object and np.dtype(dtype).kind in "iu" and arr.size:
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            raise BadRequest(f"inputs[{name}]: data has fractions, not {datatype}")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(f"inputs[{name}]: values outside the {datatype} range [{info.min}, {info.max}]")
    try:
        arr = arr.astype(dtype, copy=False).reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"inputs[{name}]: cannot read data as {datatype}: {exc}") from None
    return name, arr


def v2_datatype(arr: np.ndarray) -> str:
    if arr.dtype.kind == "b":
        return "BOOL"
    return _NP_TO_V2.get(f"{arr.dtype.kind}{arr.dtype.itemsize}", "BYTES")


# Response ids when the request has none: a per-process random prefix and a counter.
# uuid4() per request costs ~9 us (an os.urandom syscall), more than the whole v2 encoding.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def _next_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids)}"


def encode_v1(pred: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": pred}, option=JSON_OPTS)


def encode_v2(sig: Signature, model: str, version: str, pred: np.ndarray, request_id: Any) -> bytes:
    if pred.dtype.kind in "OUS":
        pred = pred.astype(str)
        data: Any = pred.reshape(-1).tolist()
    else:
        data = pred.reshape(-1)
    out = {
        "name": sig.outputs[0] if sig.outputs else "predict",
        "shape": list(pred.shape),
        "datatype": v2_datatype(pred),
        "data": data,
    }
    rid = request_id if isinstance(request_id, str) and request_id else _next_id()
    return orjson.dumps({"model_name": model, "model_version": version, "id": rid, "outputs": [out]}, option=JSON_OPTS)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=JSON_OPTS)
