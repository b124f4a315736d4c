#!/usr/bin/env bash
# The test command: makes sure the services and tools the tests need are there (RabbitMQ with its
# management plugin, Garage, ONNX Runtime, the Python peers, Chromium, promtool), then runs
# `cargo test --workspace`. Extra arguments go to cargo test, e.g. `deploy/test.sh -p refit-proto`.
#
# Exported for the tests: REFIT_S3_* (Garage), ORT_DYLIB_PATH, REFIT_PYTHON (the venv with
# onnx/onnxruntime/playwright), REFIT_CHROMIUM (tools/dashboard_check.py's browser) and PROMTOOL
# (the coordinator's /metrics check).
#
# Idempotent and quick when everything is already up (see deploy/README.md for each service).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

deploy/rabbitmq.sh >&2
eval "$(deploy/s3-server.sh)"
eval "$(deploy/onnxruntime.sh)"
REFIT_PYTHON="$(deploy/python-peers.sh)"
REFIT_CHROMIUM="$(deploy/chromium.sh)"
PROMTOOL="$(deploy/promtool.sh)"
export REFIT_PYTHON REFIT_CHROMIUM PROMTOOL

exec cargo test --workspace --locked "$@"
