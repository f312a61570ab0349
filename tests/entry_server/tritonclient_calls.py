"""Run by the tritonclient environment's Python (tritonclient pins protobuf<7, which the project's
environment cannot have), never imported by the test suite: calls a modelrunner server the way a
Triton user would, with tritonclient's gRPC client, and reports what came back.

    python tritonclient_calls.py SPEC.json

SPEC: ``{"url", "model", "inputs": {name: npy path}, "out_dir", "token" (optional),
"parameters" (optional), "bad_shape" (optional: a shape the model refuses)}``. Writes
``infer_<output>.npy`` and ``stream<i>_<output>.npy`` into out_dir and prints one JSON line.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array.astype(np.float32))
        inputs.append(tensor)
    return inputs


def _status(e: InferenceServerException) -> str:
    return str(e.status()).removeprefix("StatusCode.")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out_dir = Path(spec["out_dir"])
    headers = {"authorization": f"Bearer {spec['token']}"} if spec.get("token") else None
    params = spec.get("parameters") or None
    arrays = {name: np.load(path) for name, path in spec["inputs"].items()}
    report: dict[str, object] = {}
    client = grpcclient.InferenceServerClient(spec["url"])
    report["live"] = client.is_server_live(headers=headers)
    report["ready"] = client.is_server_ready(headers=headers)
    report["model_ready"] = client.is_model_ready(spec["model"], headers=headers)
    metadata = client.get_model_metadata(spec["model"], headers=headers, as_json=True)
    report["metadata"] = metadata

    result = client.infer(spec["model"], _inputs(arrays), headers=headers, parameters=params)
    outputs = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
    report["outputs"] = outputs
    for name in outputs:
        np.save(out_dir / f"infer_{name}.npy", result.as_numpy(name))

    bad = (
        {n: np.zeros(spec["bad_shape"], np.float32) for n in arrays} if "bad_shape" in spec else {}
    )
    if bad:
        try:
            client.infer(spec["model"], _inputs(bad), headers=headers)
            report["bad_infer"] = "OK"
        except InferenceServerException as e:
            report["bad_infer"] = _status(e)
            report["bad_infer_message"] = e.message()
    try:
        client.infer("no-such-model", _inputs(arrays), headers=headers)
    except InferenceServerException as e:
        report["unknown_model"] = _status(e)

    # a stream of frames: good, bad (when given), good; answers come back in order
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers=headers
    )
    frames = [arrays, bad, arrays] if bad else [arrays, arrays]
    for i, frame in enumerate(frames):
        client.async_stream_infer(
            spec["model"], _inputs(frame), request_id=str(i), parameters=params
        )
    stream = []
    for i in range(len(frames)):
        result, error = answers.get(timeout=300)
        if error is not None:
            stream.append({"error": str(error)})
            continue
        stream.append({"id": result.get_response().id})
        for name in outputs:
            np.save(out_dir / f"stream{i}_{name}.npy", result.as_numpy(name))
    client.stop_stream()
    report["stream"] = stream
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
