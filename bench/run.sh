#!/usr/bin/env bash
# The training-throughput benchmark: refit vs PyTorch (CPU) vs ONNX Runtime's training API, all
# training refit's DIET-lite model, on financial-demo (set1+set2) and on a synthetic dataset with a
# ~6x larger feature vocabulary. One command does everything:
#
#   bench/run.sh
#
# 1. creates/updates the git-ignored venv .venv-bench/ from bench/requirements.txt (idempotent:
#    a stamp holds the requirements' hash; the first install downloads ~3.3 GB, mostly torch's
#    CUDA libraries, and takes a few minutes);
# 2. installs ONNX Runtime's shared library for refit (deploy/onnxruntime.sh, idempotent);
# 3. builds refit in release (cargo build --release -p refit-engine --example bench_train);
# 4. exports the data: financial-demo set1+set2 as JSONL, the synthetic set from it
#    (bench/synth_data.py), and both featurized as refit's trainer sees them (bench_train features);
# 5. trains refit (bench_train train) and the peers (bench/peers.py) on both (bench/measure.py):
#    for each repeat, each dataset, each framework, one run in a fresh process, interleaved so a
#    disturbance hits all frameworks alike;
# 6. prints a markdown table and writes bench/results/latest.json and bench/results/latest.md.
#
# Each run: a fresh model, 1 warm-up epoch, then EPOCHS timed epochs; median examples/s of
# REPEATS runs; THREADS threads everywhere. Environment (defaults):
#   EPOCHS_FD=50 EPOCHS_SYNTH=15 REPEATS=3 THREADS=2 SEED=42
#   FRAMEWORKS=refit,torch,torch_bag,torch_sparse,ort      PYTHON=python3.11 (else python3)
#   QUIET_BUSY=10 QUIET_WAIT=900 RETRIES=3
# Other processes on the machine skew the numbers badly (with 2 threads on 2 busy cores, PyTorch's
# OpenMP threads wait on each other and a step takes up to 10x longer). So before each run the
# script waits until the CPUs are under QUIET_BUSY% busy (for at most QUIET_WAIT s), measures how
# much CPU other processes took during the run, and repeats a run they took more than QUIET_BUSY%
# of (at most RETRIES times); the report shows that share.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
EPOCHS_FD="${EPOCHS_FD:-50}"
EPOCHS_SYNTH="${EPOCHS_SYNTH:-15}"
REPEATS="${REPEATS:-3}"
THREADS="${THREADS:-2}"
SEED="${SEED:-42}"
FRAMEWORKS="${FRAMEWORKS:-refit,torch,torch_bag,torch_sparse,ort}"
venv="$repo/.venv-bench"
out="$repo/bench/results"
data="$repo/examples/data/financial-demo"
say() { echo "bench: $*" >&2; }

# --- 1. the Python peers' venv
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.bench-requirements"
want="$(sha256sum bench/requirements.txt | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  [[ -x "$venv/bin/python" ]] || { say "creating $venv"; "$python" -m venv "$venv"; }
  say "installing bench/requirements.txt into $venv (first time: ~3.3 GB download)"
  rm -f "$stamp"
  t0=$SECONDS
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
  "$venv/bin/python" -c 'import torch, onnx, onnxruntime.training.api' >/dev/null
  echo "$want" > "$stamp"
  say "venv ready in $((SECONDS - t0)) s ($(du -sh "$venv" | cut -f1))"
fi
py="$venv/bin/python"

# --- 2. ONNX Runtime for refit
ORT_DYLIB_PATH="$(deploy/onnxruntime.sh --path)"
export ORT_DYLIB_PATH

# --- 3. refit, release build
say "building refit (release)"
cargo build --release --quiet -p refit-engine --example bench_train
bin="$repo/target/release/examples/bench_train"

# --- 4. data
mkdir -p "$out"
"$bin" jsonl --data "$data/set1.yml,$data/set2.yml" --out "$out/financial-demo.jsonl"
"$py" bench/synth_data.py --in "$out/financial-demo.jsonl" --out "$out/synthetic.jsonl"
"$bin" features --data "$data/set1.yml,$data/set2.yml" --out "$out/financial-demo.features.json"
"$bin" features --data "$out/synthetic.jsonl" --out "$out/synthetic.features.json"

# --- 5./6. measurements (interleaved, each on a quiet machine) and the report
"$py" bench/measure.py --bin "$bin" --py "$py" --out "$out" \
  --dataset "financial-demo:$EPOCHS_FD:$data/set1.yml,$data/set2.yml:$out/financial-demo.features.json" \
  --dataset "synthetic:$EPOCHS_SYNTH:$out/synthetic.jsonl:$out/synthetic.features.json" \
  --frameworks "$FRAMEWORKS" --repeats "$REPEATS" --threads "$THREADS" --seed "$SEED" \
  --quiet-busy "${QUIET_BUSY:-10}" --quiet-wait "${QUIET_WAIT:-900}" --retries "${RETRIES:-3}" \
  --ort-lib "$ORT_DYLIB_PATH" --command "bench/run.sh"
