#!/usr/bin/env python3
"""Checks ONNX model files with the reference `onnx` package.

    python tools/onnx_check.py [--canonical] MODEL.onnx...

For each file: loads it, runs onnx.checker.check_model(model, full_check=True) (structure,
operator schemas, and strict shape inference), and prints "ok <path>" or "FAIL <path>: <error>".
With --canonical it also requires the file's bytes to equal what the reference protobuf
implementation writes for the same model after dropping unknown fields: that proves every field
was written with onnx.proto's field number, wire type and packing (worker/engine/src/onnx/proto.rs).

Exits 0 when every file passes, 1 when any fails, 2 on a usage error or when `onnx` is missing.
Run it with the venv of deploy/python-peers.sh: .venv/bin/python tools/onnx_check.py ...
"""

import argparse
import sys


def check(path, canonical):
    import onnx

    with open(path, "rb") as f:
        data = f.read()
    model = onnx.ModelProto()
    model.ParseFromString(data)
    onnx.checker.check_model(model, full_check=True)
    if canonical:
        model.DiscardUnknownFields()
        again = model.SerializeToString()
        if again != data:
            first = next(
                (i for i, (a, b) in enumerate(zip(data, again)) if a != b),
                min(len(data), len(again)),
            )
            raise ValueError(
                f"not canonical: {len(data)} bytes written, the reference encoding has "
                f"{len(again)}; first difference at byte {first}"
            )


def main(argv):
    parser = argparse.ArgumentParser(description="Check ONNX models with onnx.checker.")
    parser.add_argument("models", nargs="+", help="ONNX model files")
    parser.add_argument(
        "--canonical",
        action="store_true",
        help="also require the bytes to match the reference protobuf encoding",
    )
    args = parser.parse_args(argv)
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        print(f"onnx is not installed ({err}); run deploy/python-peers.sh", file=sys.stderr)
        return 2

    failed = 0
    for path in args.models:
        try:
            check(path, args.canonical)
        except Exception as err:  # any failure of one file is reported, the rest still checked
            failed += 1
            message = " ".join(str(err).split())
            print(f"FAIL {path}: {type(err).__name__}: {message}")
        else:
            print(f"ok {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
