#!/usr/bin/env bash
# Creates the git-ignored virtual environment `<repo>/.venv` holding the Python peers refit's tests
# compare against: `onnx` (onnx.checker validates the ONNX files refit writes) and the stock
# `onnxruntime` wheel (predictions must match it), plus numpy; and `playwright`, whose sync API
# tools/dashboard_check.py drives the system Chromium with (deploy/chromium.sh installs that; the
# wheel's own browser download, `playwright install`, is never run). Prints the venv's python path.
# Idempotent: a stamp file records a hash of the pinned requirements; when it matches, a second
# run returns in well under a second without touching pip.
#
#   deploy/python-peers.sh           # install (if needed), print the python path on stdout
#
# Tests find that python through REFIT_PYTHON (default <repo>/.venv/bin/python).
#
# Environment:
#   PYTHON             the Python that creates the venv (default python3; 3.10 to 3.12)
#   REFIT_VENV_DIR     where the venv goes (default <repo>/.venv)
#   REFIT_ORT_VERSION  onnxruntime version (default 1.32.0, the one deploy/onnxruntime.sh installs)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${REFIT_VENV_DIR:-$repo/.venv}"
python="${PYTHON:-python3}"
ort_version="${REFIT_ORT_VERSION:-1.32.0}"

# Pinned so every machine checks against the same onnx.checker and runtime. onnx 1.23 knows
# IR version 9 / opset 19, the ones refit writes (worker/engine/src/onnx/), and later ones.
# playwright 1.65.2 drives Debian's chromium package (tools/dashboard_check.py).
requirements="onnx==1.23.2
onnxruntime==$ort_version
numpy==2.4.6
playwright==1.65.2"

say() { echo "python-peers: $*" >&2; }

stamp="$venv/.refit-requirements"
want="$(printf '%s\n' "$requirements" | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv/bin/python"
  exit 0
fi

command -v "$python" >/dev/null || { say "$python not found; install Python 3 (with the venv module)"; exit 1; }
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv"
  "$python" -m venv "$venv" >&2 || {
    say "'$python -m venv' failed; on Debian/Ubuntu install it with: apt-get install python3-venv"
    exit 1
  }
fi

say "installing $(printf '%s' "$requirements" | tr '\n' ' ')"
rm -f "$stamp"
req_file="$(mktemp)"
trap 'rm -f "$req_file"' EXIT
printf '%s\n' "$requirements" > "$req_file"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$req_file" >&2
# Fail here, not in a test, when the install is unusable.
"$venv/bin/python" -c 'import onnx, onnx.checker, onnxruntime, numpy, playwright.sync_api' >&2
printf '%s\n' "$want" > "$stamp"
say "ready: $venv/bin/python"
echo "$venv/bin/python"
