#!/usr/bin/env bash
# The test command: makes sure the services the tests need are running, then runs
# `cargo test --workspace`. Extra arguments go to cargo test, e.g. `deploy/test.sh -p refit-proto`.
#
# Idempotent and quick when everything is already up (see deploy/README.md for each service).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

deploy/rabbitmq.sh >&2
eval "$(deploy/s3-server.sh)"
eval "$(deploy/onnxruntime.sh)"
if [[ -x deploy/python-peers.sh ]]; then
  REFIT_PYTHON="$(deploy/python-peers.sh)"
  export REFIT_PYTHON
fi

exec cargo test --workspace --locked "$@"
