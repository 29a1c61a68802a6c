#!/usr/bin/env python3
"""Talks to a running outpost-agent serving the `datatypes` test model with tritonclient's HTTP
client, unchanged, and checks every answer exactly.

Usage: python tests/oip/tritonclient_check.py HOST:PORT

The model (tests/models/make_models.py, `datatypes`) takes one [N, 2] input of every OIP
datatype and answers each in the same datatype: FP32 times 3, FP64 plus 0.5, FP16 negated,
integers plus one, UINT64 and BYTES passed through, BOOL negated, and `label`, the INT64
arg-max of the FP32 rows. Requests go out in JSON and in the binary tensor data extension,
outputs come back both ways; every value must be exactly what numpy computes. Prints one line
per check and `N passed, 0 failed` at the end; exits non-zero on the first failure.
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "datatypes"

# (input, OIP datatype, numpy type)
IO = [
    ("f32", "FP32", np.float32),
    ("f64", "FP64", np.float64),
    ("f16", "FP16", np.float16),
    ("i8", "INT8", np.int8),
    ("i16", "INT16", np.int16),
    ("i32", "INT32", np.int32),
    ("i64", "INT64", np.int64),
    ("u8", "UINT8", np.uint8),
    ("u16", "UINT16", np.uint16),
    ("u32", "UINT32", np.uint32),
    ("u64", "UINT64", np.uint64),
    ("b", "BOOL", np.bool_),
    ("s", "BYTES", np.object_),
]

passed = 0


def ok(what: str) -> None:
    global passed
    passed += 1
    print(f"ok: {what}")


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, _, t in IO:
        if name == "s":
            words = np.array(["", "a", "héllo", "tab\t", 'quote"d', "emoji \U0001f600"], dtype=object)
            out[name] = words[rng.integers(0, len(words), size=(n, 2))]
        elif name == "b":
            out[name] = rng.integers(0, 2, size=(n, 2)).astype(np.bool_)
        elif np.issubdtype(t, np.floating):
            out[name] = rng.normal(0.0, 100.0, size=(n, 2)).astype(t)
        else:
            info = np.iinfo(t)
            high = info.max if name == "u64" else info.max - 1
            out[name] = rng.integers(info.min, high, size=(n, 2), dtype=t, endpoint=True)
    out["i64"][0] = [2**53 + 1, -(2**63)]
    out["u64"][0] = [2**64 - 1, 2**53 + 1]
    out["f32"][0] = [np.float32(0.1), np.float32(1) / np.float32(3)]
    out["f16"][0] = [np.float16(0.1), np.float16(65504)]
    return out


def expected(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, _, t in IO:
        x = inputs[name]
        if name == "f32":
            out["f32_out"] = x * np.float32(3)
        elif name == "f64":
            out["f64_out"] = x + np.float64(0.5)
        elif name == "f16":
            out["f16_out"] = -x
        elif name in ("u64", "s"):
            out[f"{name}_out"] = x
        elif name == "b":
            out["b_out"] = np.logical_not(x)
        else:
            out[f"{name}_out"] = x + t(1)
    out["label"] = np.argmax(inputs["f32"], axis=1).astype(np.int64)
    return out


def same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype == object:
        got_text = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in got.reshape(-1)], dtype=object)
        assert got_text.tolist() == want.reshape(-1).tolist(), f"{name}: {got_text} != {want}"
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    # Bit for bit: the agent answers in the output's own datatype, exactly.
    assert got.tobytes() == want.tobytes(), f"{name}: {got!r} != {want!r}"


def infer(client, inputs, binary_in: bool, binary_out, request_id: str, version: str = ""):
    infer_inputs = []
    for name, datatype, _ in IO:
        tensor = httpclient.InferInput(name, list(inputs[name].shape), datatype)
        tensor.set_data_from_numpy(inputs[name], binary_data=binary_in)
        infer_inputs.append(tensor)
    outputs = None
    if binary_out is not None:
        names = [f"{n}_out" for n, _, _ in IO] + ["label"]
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out(i)) for i, n in enumerate(names)]
    return client.infer(MODEL, infer_inputs, model_version=version, outputs=outputs, request_id=request_id)


def main() -> int:
    url = sys.argv[1]
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server live"
    assert client.is_server_ready(), "server ready"
    assert client.is_model_ready(MODEL), "model ready"
    ok("live and ready")
    metadata = client.get_model_metadata(MODEL)
    declared = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    assert declared == {name: datatype for name, datatype, _ in IO}, declared
    assert {t["name"]: t["datatype"] for t in metadata["outputs"]}["label"] == "INT64"
    ok("metadata names every datatype")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    ok("server metadata lists binary_tensor_data")

    cases = [
        ("JSON in, JSON out", False, lambda i: False),
        ("binary in, binary out (the client's defaults)", True, None),
        ("JSON in, binary out", False, lambda i: True),
        ("binary in, mixed out", True, lambda i: i % 2 == 0),
    ]
    for seed, (what, binary_in, binary_out) in enumerate(cases):
        inputs = rows(1 + seed, seed)
        want = expected(inputs)
        result = infer(client, inputs, binary_in, binary_out, request_id=f"req-{seed}")
        assert result.get_response()["id"] == f"req-{seed}", result.get_response()
        for name, value in want.items():
            same(name, result.as_numpy(name), value)
        ok(f"{what}: {len(want)} outputs exact")

    # The versioned route, and the datatype named in the JSON answer.
    inputs = rows(2, 9)
    result = infer(client, inputs, False, lambda i: False, request_id="v", version="1.0.0")
    types = {o["name"]: o["datatype"] for o in result.get_response()["outputs"]}
    assert types["i64_out"] == "INT64" and types["b_out"] == "BOOL" and types["s_out"] == "BYTES", types
    ok("versioned route answers in each output's datatype")

    # A refusal is an exception naming the problem, not a crash.
    bad = httpclient.InferInput("f32", [1, 2], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 2), dtype=np.float64))
    try:
        client.infer(MODEL, [bad])
    except InferenceServerException as error:
        assert "expects FP32" in str(error), str(error)
        ok("a wrong datatype is refused with the reason")
    else:
        raise AssertionError("a wrong datatype was accepted")

    print(f"{passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
