#!/usr/bin/env python3
"""Generate the small ONNX models and data files Outpost's tests use.

Usage: python tests/models/make_models.py [--out DIR]   (default DIR: this script's folder)

Deterministic: fixed seeds, no timestamps, nothing downloaded. Running it twice gives
byte-identical files, and `cargo xtask models` compares a fresh run with the committed files.

Determinism across machines: every derived float (weights, biases, input data) is rounded to
4 decimals in float64 before it becomes float32, and expected outputs are computed by
onnx.reference.ReferenceEvaluator on a float64 twin of each model and only then rounded to
float32, so last-bit differences between BLAS or SIMD kernels cannot change the bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 17
IR_VERSION = 8
PRODUCER = "outpost tests/models/make_models.py"
PRODUCER_VERSION = "1"

N_ROWS = 500
N_IMAGES = 50
N_GOLDEN = 5
ATOL = 1e-4
RTOL = 1e-3

# Per-feature normal distributions (mean, std) of the tabular baselines.
CLASSIFIER_FEATURES = [
    (0.0, 1.0),
    (5.0, 2.0),
    (10.0, 3.0),
    (-3.0, 0.5),
    (1.0, 0.1),
    (100.0, 15.0),
    (0.5, 0.2),
    (20.0, 4.0),
]
REGRESSOR_FEATURES = [
    (2.0, 1.0),
    (-1.0, 0.5),
    (50.0, 10.0),
    (0.0, 2.0),
    (7.5, 1.5),
    (300.0, 40.0),
]
SHIFT_FEATURE = 2  # f2
SHIFT_STDS = 1.5


# ---------------------------------------------------------------- numbers and text


def q4(x) -> np.ndarray:
    """Round to 4 decimals in float64 (deterministic elementwise IEEE ops)."""
    return np.round(np.asarray(x, dtype=np.float64), 4)


def f32(x) -> np.ndarray:
    return q4(x).astype(np.float32)


def clean(v: float) -> float:
    v = float(v) + 0.0  # turns -0.0 into 0.0
    if not math.isfinite(v):
        raise ValueError(f"non-finite value {v}")
    return v


def f32_json(v: np.float32) -> float:
    """The Python float whose repr is the shortest text that reads back as this float32."""
    v = np.float32(v)
    out = clean(float(str(v)))
    if np.float32(out) != v:
        raise AssertionError(f"float32 {v!r} does not round-trip through {out!r}")
    return out


def dec4_json(v) -> float:
    return clean(round(float(v), 4))


def csv_text(header: list[str], rows: np.ndarray) -> str:
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join(f"{clean(v):.4f}" for v in row))
    return "\n".join(lines) + "\n"


def oip_tensor(name: str, arr: np.ndarray, values) -> dict:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": [int(d) for d in arr.shape],
        "data": [values(v) for v in arr.reshape(-1)],
    }


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def golden_text(cases: list[dict]) -> str:
    """Top level indented, one case per line: readable and still compact."""
    head = f'{{\n  "atol": {dumps(ATOL)},\n  "rtol": {dumps(RTOL)},\n  "cases": [\n'
    body = ",\n".join("    " + dumps(c) for c in cases)
    return head + body + "\n  ]\n}\n"


# ---------------------------------------------------------------- model building


def model_bytes(graph: onnx.GraphProto, extra_opsets=()) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), *extra_opsets],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    return model.SerializeToString(deterministic=True)


def check(data: bytes) -> onnx.ModelProto:
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    return model


def init(name: str, arr: np.ndarray, dtype) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def mlp_graph(name, params, in_name, out_name, batch, n_in, n_out, softmax, dtype):
    """features -> Gemm -> Relu -> Gemm [-> Softmax]."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    w1, b1, w2, b2 = params
    logits = "logits" if softmax else out_name
    nodes = [
        helper.make_node("Gemm", [in_name, "w1", "b1"], ["hidden_pre"], name="dense1", transB=1),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], [logits], name="dense2", transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", [logits], [out_name], name="softmax", axis=-1))
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(in_name, elem, [batch, n_in])],
        [helper.make_tensor_value_info(out_name, elem, [batch, n_out])],
        initializer=[init("w1", w1, dtype), init("b1", b1, dtype), init("w2", w2, dtype), init("b2", b2, dtype)],
    )


def cnn_graph(params, softmax, dtype):
    """image [1,1,28,28] -> Conv 4x3x3 -> Relu -> MaxPool 2x2 -> Flatten -> Gemm [-> Softmax]."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    cw, cb, dw, db = params
    out = "probabilities" if softmax else "logits"
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], name="conv1", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["conv_relu"], name="relu1"),
        helper.make_node("MaxPool", ["conv_relu"], ["pool"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"], name="dense1", transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [out], name="softmax", axis=-1))
    return helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", elem, [1, 1, 28, 28])],
        [helper.make_tensor_value_info(out, elem, [1, 10])],
        initializer=[
            init("conv_w", cw, dtype),
            init("conv_b", cb, dtype),
            init("dense_w", dw, dtype),
            init("dense_b", db, dtype),
        ],
    )


def run(data: bytes, feeds: dict) -> list[np.ndarray]:
    return ReferenceEvaluator(onnx.load_from_string(data)).run(None, feeds)


# ---------------------------------------------------------------- data


def tabular(spec, n, seed, shift=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([m for m, _ in spec])
    stds = np.array([s for _, s in spec])
    if shift:
        means = means.copy()
        means[SHIFT_FEATURE] += SHIFT_STDS * stds[SHIFT_FEATURE]
    return q4(rng.normal(size=(n, len(spec))) * stds + means)


def images(n, seed) -> np.ndarray:
    """MNIST-like 28x28 images in [0, 1]: one to three soft strokes on a faintly noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    out = np.zeros((n, 1, 28, 28))
    for i in range(n):
        img = np.zeros((28, 28))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(6, 22, size=2)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(3, 9)
            width = rng.uniform(1.0, 2.0)
            dy, dx = np.sin(angle), np.cos(angle)
            # distance from each pixel to the segment centred at (cy, cx)
            t = np.clip((yy - cy) * dy + (xx - cx) * dx, -length, length)
            d2 = (yy - cy - t * dy) ** 2 + (xx - cx - t * dx) ** 2
            img = np.maximum(img, np.exp(-d2 / (2 * width**2)))
        img = img + np.abs(rng.normal(0, 0.03, size=(28, 28)))
        # cut the faint tail to exact zeros, as in real digit scans (keeps the file small)
        img = np.where(img < 0.05, 0.0, img)
        out[i, 0] = np.clip(img, 0.0, 1.0)
    return q4(out)


# ---------------------------------------------------------------- the models


def mlp_params(spec, n_hidden, n_out, seed, calib_rows, centre_outputs):
    """Random MLP whose first layer folds in per-feature standardisation; the output bias
    centres each output's logit over calib_rows so that no class dominates."""
    rng = np.random.default_rng(seed)
    n_in = len(spec)
    means = np.array([m for m, _ in spec])
    stds = np.array([s for _, s in spec])
    w1_std = rng.normal(0, 1.0 / math.sqrt(n_in), size=(n_hidden, n_in)) * 1.5
    b1_std = rng.normal(0, 0.1, size=n_hidden)
    w1 = q4(w1_std / stds)
    b1 = q4(b1_std - np.sum(w1 * means, axis=1))
    w2 = q4(rng.normal(0, 1.0 / math.sqrt(n_hidden), size=(n_out, n_hidden)) * 2.0)
    b2 = np.zeros(n_out)
    if centre_outputs:
        h = np.maximum(calib_rows @ w1.T + b1, 0.0)
        b2 = q4(-(h @ w2.T).mean(axis=0))
    return w1, b1, w2, b2


def cnn_params(seed, calib_images):
    rng = np.random.default_rng(seed)
    cw = q4(rng.normal(0, 0.5, size=(4, 1, 3, 3)))
    cb = q4(rng.normal(0, 0.05, size=4))
    dw = q4(rng.normal(0, 1.0 / math.sqrt(4 * 13 * 13), size=(10, 4 * 13 * 13)) * 3.0)
    zero = np.zeros(10)
    logits_model = model_bytes(cnn_graph((cw, cb, dw, zero), softmax=False, dtype=np.float64))
    logits = np.concatenate([run(logits_model, {"image": img[None]})[0] for img in calib_images])
    db = q4(-logits.mean(axis=0))
    return cw, cb, dw, db


def expected(model64: bytes, model32: bytes, feeds32: dict) -> list[np.ndarray]:
    """Outputs from the float64 twin, rounded once to float32; cross-checked with the float32 file."""
    feeds64 = {k: v.astype(np.float64) for k, v in feeds32.items()}
    outs64 = run(model64, feeds64)
    outs32 = run(model32, feeds32)
    result = []
    for a, b in zip(outs64, outs32):
        e = a.astype(np.float32)
        if not np.allclose(e, b, rtol=1e-5, atol=1e-6):
            raise AssertionError("float32 model disagrees with its float64 twin")
        result.append(e)
    return result


def golden_cases(model64, model32, in_name, out_name, batches: list[np.ndarray]) -> list[dict]:
    cases = []
    for x in batches:
        x32 = x.astype(np.float32)
        (y,) = expected(model64, model32, {in_name: x32})
        cases.append(
            {
                "inputs": [oip_tensor(in_name, x, dec4_json)],
                "outputs": [oip_tensor(out_name, y, f32_json)],
            }
        )
    return cases


def class_counts(model32: bytes, in_name: str, rows: np.ndarray, n_classes: int) -> list[int]:
    counts = [0] * n_classes
    for r in rows:
        y = run(model32, {in_name: r.astype(np.float32).reshape(1, *r.shape)})[0]
        counts[int(np.argmax(y))] += 1
    return counts


def require_spread(what: str, counts: list[int], minimum: int) -> None:
    print(f"  {what}: argmax counts {counts}")
    if sum(1 for c in counts if c >= minimum) < 2:
        raise AssertionError(f"{what}: classifier output is degenerate: {counts}")


def build(out: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    # ---- tabular classifiers (mlp_classifier and batched_classifier share weights and data)
    header8 = [f"f{i}" for i in range(8)]
    base8 = tabular(CLASSIFIER_FEATURES, N_ROWS, seed=101)
    shifted8 = tabular(CLASSIFIER_FEATURES, N_ROWS, seed=102, shift=True)
    golden8 = tabular(CLASSIFIER_FEATURES, 1 + 3 + 2 + 1 + 3 + N_GOLDEN, seed=103)
    params = mlp_params(CLASSIFIER_FEATURES, 16, 3, seed=7, calib_rows=base8, centre_outputs=True)

    for name, batch in (("mlp_classifier", 1), ("batched_classifier", "N")):
        m32 = model_bytes(mlp_graph(name, params, "features", "probabilities", batch, 8, 3, True, np.float32))
        m64 = model_bytes(mlp_graph(name, params, "features", "probabilities", batch, 8, 3, True, np.float64))
        check(m32)
        files[f"{name}.onnx"] = m32
        files[f"{name}.baseline.csv"] = csv_text(header8, base8).encode()
        files[f"{name}.shifted.csv"] = csv_text(header8, shifted8).encode()
        if batch == 1:
            require_spread(name, class_counts(m32, "features", base8, 3), minimum=50)
            batches = [golden8[i : i + 1] for i in range(N_GOLDEN)]
        else:
            sizes, batches, at = [1, 3, 2, 1, 3], [], N_GOLDEN
            for s in sizes:
                batches.append(golden8[at : at + s])
                at += s
        cases = golden_cases(m64, m32, "features", "probabilities", batches)
        files[f"{name}.golden.json"] = golden_text(cases).encode()
        if name == "mlp_classifier":
            bad = json.loads(json.dumps(cases))
            data = bad[0]["outputs"][0]["data"]
            v = np.float32(data[0])
            data[0] = f32_json(v + np.float32(0.5) if v < 0.5 else v - np.float32(0.5))
            files[f"{name}.bad_golden.json"] = golden_text(bad).encode()
            digest = hashlib.sha256(files[f"{name}.baseline.csv"]).hexdigest()
            lineage = {
                "training_data_digest": f"sha256:{digest}",
                "code_revision": "make_models.py",
                "metrics": {"accuracy": 0.9},
                "hyperparameters": {"hidden": 16, "seed": 7},
            }
            files[f"{name}.lineage.json"] = (json.dumps(lineage, indent=2) + "\n").encode()

    # ---- tabular regressor
    header6 = [f"f{i}" for i in range(6)]
    base6 = tabular(REGRESSOR_FEATURES, N_ROWS, seed=201)
    shifted6 = tabular(REGRESSOR_FEATURES, N_ROWS, seed=202, shift=True)
    golden6 = tabular(REGRESSOR_FEATURES, N_GOLDEN, seed=203)
    rparams = mlp_params(REGRESSOR_FEATURES, 16, 1, seed=11, calib_rows=base6, centre_outputs=False)
    r32 = model_bytes(mlp_graph("regressor", rparams, "features", "prediction", 1, 6, 1, False, np.float32))
    r64 = model_bytes(mlp_graph("regressor", rparams, "features", "prediction", 1, 6, 1, False, np.float64))
    check(r32)
    files["regressor.onnx"] = r32
    files["regressor.baseline.csv"] = csv_text(header6, base6).encode()
    files["regressor.shifted.csv"] = csv_text(header6, shifted6).encode()
    files["regressor.golden.json"] = golden_text(
        golden_cases(r64, r32, "features", "prediction", [golden6[i : i + 1] for i in range(N_GOLDEN)])
    ).encode()

    # ---- CNN
    base_img = images(N_IMAGES, seed=301)
    golden_img = images(N_GOLDEN, seed=303)
    cparams = cnn_params(seed=31, calib_images=base_img)
    c32 = model_bytes(cnn_graph(cparams, softmax=True, dtype=np.float32))
    c64 = model_bytes(cnn_graph(cparams, softmax=True, dtype=np.float64))
    check(c32)
    files["cnn.onnx"] = c32
    require_spread("cnn", class_counts(c32, "image", base_img, 10), minimum=3)
    lines = [dumps({"inputs": [oip_tensor("image", img[None], dec4_json)]}) for img in base_img]
    files["cnn.baseline.jsonl"] = ("\n".join(lines) + "\n").encode()
    files["cnn.golden.json"] = golden_text(
        golden_cases(c64, c32, "image", "probabilities", [img[None] for img in golden_img])
    ).encode()

    # ---- models a loader must refuse
    # invalid.onnx: mlp_classifier.onnx cut in half, as an interrupted copy would leave it.
    invalid = files["mlp_classifier.onnx"][: len(files["mlp_classifier.onnx"]) // 2]
    try:
        onnx.load_from_string(invalid)
    except Exception:
        pass
    else:
        raise AssertionError("invalid.onnx unexpectedly parses")
    files["invalid.onnx"] = invalid

    # unsupported_op.onnx: a valid model whose middle node is the custom op com.example::Frobnicate.
    frob = helper.make_graph(
        [
            helper.make_node("Relu", ["features"], ["relu_out"], name="relu1"),
            helper.make_node("Frobnicate", ["relu_out"], ["frobnicated"], name="frobnicate1", domain="com.example"),
            helper.make_node("Softmax", ["frobnicated"], ["probabilities"], name="softmax", axis=-1),
        ],
        "unsupported_op",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 8])],
        value_info=[helper.make_tensor_value_info("frobnicated", TensorProto.FLOAT, [1, 8])],
    )
    unsupported = model_bytes(frob, extra_opsets=[helper.make_opsetid("com.example", 1)])
    check(unsupported)
    files["unsupported_op.onnx"] = unsupported

    # ---- datatypes: every OIP datatype in and out
    files.update(datatypes_files())

    return files


# ---------------------------------------------------------------- every OIP datatype

# (input name, OIP datatype, numpy type, ONNX type, node making the output from the input)
DATATYPE_IO = [
    ("f32", "FP32", np.float32, TensorProto.FLOAT, "Mul"),
    ("f64", "FP64", np.float64, TensorProto.DOUBLE, "Add"),
    ("f16", "FP16", np.float16, TensorProto.FLOAT16, "Neg"),
    ("i8", "INT8", np.int8, TensorProto.INT8, "Add"),
    ("i16", "INT16", np.int16, TensorProto.INT16, "Add"),
    ("i32", "INT32", np.int32, TensorProto.INT32, "Add"),
    ("i64", "INT64", np.int64, TensorProto.INT64, "Add"),
    ("u8", "UINT8", np.uint8, TensorProto.UINT8, "Add"),
    ("u16", "UINT16", np.uint16, TensorProto.UINT16, "Add"),
    ("u32", "UINT32", np.uint32, TensorProto.UINT32, "Add"),
    ("u64", "UINT64", np.uint64, TensorProto.UINT64, "Identity"),
    ("b", "BOOL", np.bool_, TensorProto.BOOL, "Not"),
    ("s", "BYTES", np.object_, TensorProto.STRING, "Identity"),
]


def datatypes_graph() -> onnx.GraphProto:
    """One input of every OIP datatype, [N, 2] each, and an output of the same datatype from
    each (floats scaled, shifted or negated, integers plus one, UINT64 and text passed through,
    booleans negated), plus the INT64 arg-max of the FP32 row."""
    nodes, inits, inputs, outputs = [], [], [], []
    for name, _, np_type, onnx_type, op in DATATYPE_IO:
        inputs.append(helper.make_tensor_value_info(name, onnx_type, ["N", 2]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", onnx_type, ["N", 2]))
        if op in ("Mul", "Add"):
            const = {"f32": 3.0, "f64": 0.5}.get(name, 1)
            inits.append(init(f"{name}_k", np.array(const), np_type))
            nodes.append(helper.make_node(op, [name, f"{name}_k"], [f"{name}_out"], name=f"{name}_{op.lower()}"))
        else:
            nodes.append(helper.make_node(op, [name], [f"{name}_out"], name=f"{name}_{op.lower()}"))
    nodes.append(helper.make_node("ArgMax", ["f32"], ["label"], name="label_argmax", axis=1, keepdims=0))
    outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    return helper.make_graph(nodes, "datatypes", inputs, outputs, initializer=inits)


def datatype_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` rows of every input: edge values of each type first, then seeded ones."""
    rng = np.random.default_rng(seed)
    rows = {}
    for name, _, np_type, _, _ in DATATYPE_IO:
        if name == "s":
            words = ["", "a", "héllo", "line\nbreak", 'quote"d', "emoji \U0001f600", "tab\t"]
            rows[name] = np.array([[words[int(i)] for i in rng.integers(0, len(words), 2)] for _ in range(n)], dtype=object)
        elif name == "b":
            rows[name] = rng.integers(0, 2, size=(n, 2)).astype(np.bool_)
        elif np.issubdtype(np_type, np.floating):
            rows[name] = np.round(rng.normal(0.0, 10.0, size=(n, 2)), 4).astype(np_type)
        else:
            info = np.iinfo(np_type)
            # Plus one must not overflow, except for UINT64 which passes through.
            high = info.max if name == "u64" else info.max - 1
            rows[name] = rng.integers(info.min, high, size=(n, 2), dtype=np_type, endpoint=True)
    # Edge values in the first row: exactness beyond 2^53, the extremes of each type.
    rows["i64"][0] = [9007199254740993, -(2**62)]
    rows["u64"][0] = [18446744073709551615, 9007199254740993]
    rows["i8"][0] = [-128, 126]
    rows["f32"][0] = [np.float32(0.1), np.float32(3.4028234e38) / np.float32(4)]
    rows["f16"][0] = [np.float16(0.1), np.float16(65504)]
    rows["s"][0] = ["héllo", ""]
    return rows


def typed_json(arr: np.ndarray) -> list:
    """Tensor data as JSON values of its own type: integers, booleans, strings, and floats
    as the shortest text of their own precision."""
    flat = arr.reshape(-1)
    if arr.dtype == object:
        return [str(v) for v in flat]
    if arr.dtype == np.bool_:
        return [bool(v) for v in flat]
    if np.issubdtype(arr.dtype, np.integer):
        return [int(v) for v in flat]
    # repr of a numpy float is its shortest round-trip text in its own precision.
    return [float(repr(v.item()) if arr.dtype == np.float64 else np.format_float_positional(v, unique=True, trim="-")) for v in flat]


def typed_tensor(name: str, datatype: str, arr: np.ndarray) -> dict:
    return {"name": name, "datatype": datatype, "shape": [int(d) for d in arr.shape], "data": typed_json(arr)}


def datatypes_files() -> dict[str, bytes]:
    model = model_bytes(datatypes_graph())
    check(model)
    evaluator = ReferenceEvaluator(onnx.load_from_string(model))
    files = {"datatypes.onnx": model}
    out_types = {f"{n}_out": d for n, d, *_ in DATATYPE_IO} | {"label": "INT64"}

    def case(rows: dict[str, np.ndarray]) -> dict:
        results = evaluator.run(None, rows)
        names = [o.name for o in onnx.load_from_string(model).graph.output]
        return {
            "inputs": [typed_tensor(n, d, rows[n]) for n, d, *_ in DATATYPE_IO],
            "outputs": [typed_tensor(name, out_types[name], np.asarray(r)) for name, r in zip(names, results)],
        }

    golden = datatype_rows(1 + N_GOLDEN, seed=401)
    cases = [case({n: v[i : i + 1] for n, v in golden.items()}) for i in range(N_GOLDEN)]
    cases.append(case({n: v[1:4] for n, v in golden.items()}))
    files["datatypes.golden.json"] = golden_text(cases).encode()
    base = datatype_rows(40, seed=402)
    lines = [
        dumps({"inputs": [typed_tensor(n, d, base[n][i : i + 1]) for n, d, *_ in DATATYPE_IO]})
        for i in range(len(base["f32"]))
    ]
    files["datatypes.baseline.jsonl"] = ("\n".join(lines) + "\n").encode()
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)
    print(f"generating into {args.out} (onnx {onnx.__version__}, numpy {np.__version__})")
    files = build(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in sorted(files):
        data = files[name]
        tmp = args.out / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, args.out / name)
        total += len(data)
        print(f"  {len(data):>8}  {name}")
    print(f"  {total:>8}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
