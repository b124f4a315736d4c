#!/usr/bin/env python3
"""Runs an exported refit model with stock ONNX Runtime and compares its intent probabilities
with refit's own.

    python tools/predict_parity.py MODEL.onnx CASES.json [--tolerance 1e-5]

CASES.json (written by worker/engine/tests/engine.rs) is a list of
{"inputs": {name: {"shape": [...], "dtype": "f32"|"i64", "data": [...]}},
 "intent_probs": [...]}; each case is one batch of the model's inputs and what refit computed.
Prints the largest absolute difference; exits 0 when every probability is within the tolerance,
1 when one is not, 2 on a usage error.
"""

import argparse
import json
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("cases")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as error:
        print(f"missing Python peer: {error}; run deploy/python-peers.sh", file=sys.stderr)
        return 2

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    with open(args.cases) as f:
        cases = json.load(f)
    worst = 0.0
    count = 0
    for case in cases:
        feeds = {}
        for name, tensor in case["inputs"].items():
            dtype = np.float32 if tensor["dtype"] == "f32" else np.int64
            feeds[name] = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        (probs,) = session.run(["intent_probs"], feeds)
        expected = np.asarray(case["intent_probs"], dtype=np.float32).reshape(probs.shape)
        worst = max(worst, float(np.max(np.abs(probs - expected))))
        count += probs.shape[0]
    print(f"{count} examples, largest difference {worst:.3g}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
