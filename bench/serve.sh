#!/usr/bin/env bash
# The serving benchmark: how fast `refit serve` answers Rasa's POST /model/parse over HTTP, next
# to the same model's in-process parse time. One command does everything:
#
#   bench/serve.sh
#
# 1. installs wrk (Debian package) if missing, and ONNX Runtime (deploy/onnxruntime.sh);
# 2. builds refit in release (cargo build --release -p refit-cli), unless REFIT_BIN names one;
# 3. trains two models with `refit demo` into local stores under bench/results/serve/:
#    financial-demo (v3: set1+set2 from scratch, 459 examples) and a synthetic ~4.1k-example set
#    (the demo's set1+set2 JSONL x9 through bench/synth_data.py, with 2 made-up words per example:
#    ~6x the features; v1);
# 4. for each model: the in-process parse time of single texts (`refit predict --timing`:
#    featurize + ONNX Runtime + decode; the median of 3 runs' medians over 100 rounds of the
#    test texts), then
#    `refit serve` (--threads = the CPUs) under wrk with bench/serve.lua POSTing the texts of
#    financial-demo's test.yml: a warm-up, the HTTP floor (GET /healthz, one connection, 5 s),
#    then concurrency 1 (-t1 -c1) and 16 (-t2 -c16), each DURATION seconds, with --latency;
# 5. prints a markdown table and writes it to bench/results/serve-latest.md (raw wrk output and
#    server logs in bench/results/serve/).
#
# Environment (defaults): REFIT_BIN (build target/release/refit), DURATION=15, PORT=5077,
# THREADS=$(nproc), QUIET_BUSY=15 QUIET_WAIT=600 (before each measurement, wait until the CPUs
# are under QUIET_BUSY% busy, for at most QUIET_WAIT s: other processes skew the numbers), and
# SYNTH_COPIES=9.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/bench/results/serve"
mkdir -p "$out"
DURATION="${DURATION:-15}"
PORT="${PORT:-5077}"
THREADS="${THREADS:-$(nproc)}"
QUIET_BUSY="${QUIET_BUSY:-15}"
QUIET_WAIT="${QUIET_WAIT:-600}"
SYNTH_COPIES="${SYNTH_COPIES:-9}"
data="$repo/examples/data/financial-demo"

say() { echo "serve-bench: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- 1. tools -------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  say "installing wrk (Debian package)"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y wrk >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y wrk >&2; }
fi
eval "$(deploy/onnxruntime.sh)"

# --- 2. refit -------------------------------------------------------------------------------
bin="${REFIT_BIN:-}"
if [[ -z $bin ]]; then
  say "building refit (release)"
  cargo build --release -p refit-cli >&2
  bin="$repo/target/release/refit"
fi
[[ -x $bin ]] || die "$bin is not an executable"

# --- 3. models ------------------------------------------------------------------------------
say "training financial-demo (refit demo)"
"$bin" demo --data "$data" --out "$out/financial" --output json >"$out/financial-demo.json"

say "making the synthetic set (x$SYNTH_COPIES, 2 made-up words per example)"
merged="$(ls "$out"/financial/datasets/sha256/*.jsonl | head -n1)"
[[ -f $merged ]] || die "refit demo stored no merged set1+set2 JSONL under $out/financial/datasets"
mkdir -p "$out/synthetic-data"
python3 bench/synth_data.py --in "$merged" --out "$out/synthetic.jsonl" \
  --copies "$SYNTH_COPIES" --insert 2 --seed 7
# `refit demo` reads Rasa YAML: the synthetic set becomes set1.yml; set2 and test are
# financial-demo's (same intents and entity types, so the fine-tune is allowed).
python3 - "$out/synthetic.jsonl" "$out/synthetic-data/set1.yml" <<'PY'
import json, sys
from collections import defaultdict

by_intent = defaultdict(list)
for line in open(sys.argv[1], encoding="utf-8"):
    if not line.strip():
        continue
    ex = json.loads(line)
    text = ex["text"]
    for e in sorted(ex.get("entities") or [], key=lambda e: -e["start"]):
        words = text[e["start"]:e["end"]]
        if e.get("value") not in (None, words):
            label = "]" + json.dumps({"entity": e["entity"], "value": e["value"]})
        else:
            label = "](" + e["entity"] + ")"
        text = text[:e["start"]] + "[" + words + label + text[e["end"]:]
    by_intent[ex["intent"]].append(text)
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write('version: "3.1"\nnlu:\n')
    for intent, texts in by_intent.items():
        f.write(f"- intent: {intent}\n  examples: |\n")
        for t in texts:
            f.write(f"    - {t}\n")
PY
cp "$data/set2.yml" "$data/test.yml" "$out/synthetic-data/"
say "training the synthetic model (refit demo --epochs 10)"
"$bin" demo --data "$out/synthetic-data" --out "$out/synthetic" --epochs 10 --output json \
  >"$out/synthetic-demo.json" || [[ $? -eq 11 ]]

# The texts wrk posts and predict times: test.yml's examples, annotations removed.
texts="$out/texts.txt"
python3 - "$data/test.yml" "$texts" <<'PY'
import re, sys
out = []
in_intent = False
for line in open(sys.argv[1], encoding="utf-8"):
    if re.match(r"^- \w+:", line):
        in_intent = line.startswith("- intent:")
    m = re.match(r"^\s+- (.*)$", line)
    if not (in_intent and m):
        continue
    text = re.sub(r"\[([^\]]*)\](\([^)]*\)|\{[^}]*\})", r"\1", m.group(1)).strip()
    if text:
        out.append(text)
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(out) + "\n")
PY
say "$(wc -l <"$texts") test texts"

# --- 4. measurements ------------------------------------------------------------------------
# CPU busy % over one second, from /proc/stat.
busy() {
  local a b
  read -r -a a < <(head -n1 /proc/stat)
  sleep 1
  read -r -a b < <(head -n1 /proc/stat)
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
wait_quiet() {
  local waited=0 now
  while now="$(busy)"; (( now > QUIET_BUSY )); do
    if (( waited >= QUIET_WAIT )); then
      say "warning: the CPUs are still ${now}% busy after ${QUIET_WAIT}s; measuring anyway"
      return
    fi
    (( waited % 30 == 0 )) && say "waiting for a quiet machine (${now}% busy)"
    waited=$(( waited + 1 ))
  done
}

# wrk's "Latency Distribution" line for a percentile, in ms.
latency_ms() {
  awk -v p="$2" '$1 == p"%" {
    v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v);
    if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; else if (unit == "m") v *= 60000;
    printf "%.3f", v }' "$1"
}
rps() { awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$1"; }

rows=()
measure() {
  local name="$1" store="$2" version="$3" examples="$4"
  local dir="$store/models/demo/v$(printf %06d "$version")"
  wait_quiet
  say "$name: in-process parse time (refit predict --timing)"
  # Three runs of 100 rounds each; the median of their medians (one short run is noisy).
  local run
  : >"$out/$name-inprocess.json"
  for run in 1 2 3; do
    "$bin" predict --model-dir "$dir" --timing --repeat 100 <"$texts" >>"$out/$name-inprocess.json"
  done
  local inproc_us
  inproc_us="$(python3 -c 'import json,statistics,sys
runs = [json.loads(l)["median_us"] for l in open(sys.argv[1]) if l.strip()]
print(round(statistics.median(runs), 1))' "$out/$name-inprocess.json")"

  say "$name: refit serve demo@v$version on 127.0.0.1:$PORT, $THREADS predictors"
  "$bin" serve --store "$store" --model "demo@v$version" --listen "127.0.0.1:$PORT" \
    --threads "$THREADS" 2>"$out/$name-serve.log" &
  local pid=$!
  local i
  for i in $(seq 1 120); do
    grep -q "listening on" "$out/$name-serve.log" && break
    kill -0 "$pid" 2>/dev/null || die "refit serve exited: $(tail -n 5 "$out/$name-serve.log")"
    sleep 0.5
  done
  grep -q "listening on" "$out/$name-serve.log" || die "refit serve did not start"
  local url="http://127.0.0.1:$PORT"
  export REFIT_BENCH_TEXTS="$texts"
  wrk -t1 -c1 -d3s -s bench/serve.lua "$url" >/dev/null
  # The HTTP floor: the same server's cheapest answer, one connection.
  wait_quiet
  say "$name: wrk -t1 -c1 -d5s GET /healthz (the HTTP round trip alone)"
  wrk -t1 -c1 -d5s --latency "$url/healthz" >"$out/$name-floor.txt"
  local c
  for c in 1 16; do
    local t=1
    [[ $c -gt 1 ]] && t=2
    wait_quiet
    say "$name: wrk -t$t -c$c -d${DURATION}s"
    wrk -t"$t" -c"$c" -d"${DURATION}s" --latency -s bench/serve.lua "$url" >"$out/$name-c$c.txt"
    if grep -q "Non-2xx\|Socket errors" "$out/$name-c$c.txt"; then
      kill "$pid"
      die "$name -c$c: failed requests: $(grep 'Non-2xx\|Socket errors' "$out/$name-c$c.txt")"
    fi
  done
  kill -TERM "$pid"
  wait "$pid" || true

  local c1="$out/$name-c1.txt" c16="$out/$name-c16.txt"
  local rps1 rps16 p50_1 p99_1 p50_16 p99_16 floor
  floor="$(latency_ms "$out/$name-floor.txt" 50)"
  rps1="$(rps "$c1")"; rps16="$(rps "$c16")"
  p50_1="$(latency_ms "$c1" 50)"; p99_1="$(latency_ms "$c1" 99)"
  p50_16="$(latency_ms "$c16" 50)"; p99_16="$(latency_ms "$c16" 99)"
  local ratio_latency ratio_rps
  ratio_latency="$(awk -v a="$p50_1" -v b="$inproc_us" 'BEGIN { printf "%.2f", a * 1000 / b }')"
  ratio_rps="$(awk -v a="$rps16" -v b="$rps1" 'BEGIN { printf "%.2f", a / b }')"
  rows+=("| $name | $examples | $inproc_us | $floor | $rps1 | $p50_1 | $p99_1 | $rps16 | $p50_16 | $p99_16 | ${ratio_latency}x | ${ratio_rps}x |")
}

synth_examples="$(wc -l <"$out/synthetic.jsonl")"
measure financial-demo "$out/financial" 3 459
measure synthetic "$out/synthetic" 1 "$synth_examples"

# --- 5. report ------------------------------------------------------------------------------
report="$repo/bench/results/serve-latest.md"
{
  echo "refit serve, $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), refit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), --threads $THREADS, wrk ${DURATION}s per run"
  echo
  echo "| model | train examples | in-process parse, median µs | HTTP floor (GET /healthz, c=1) p50 ms | c=1 parses/s | c=1 p50 ms | c=1 p99 ms | c=16 parses/s | c=16 p50 ms | c=16 p99 ms | c=1 p50 / in-process | c=16 / c=1 parses/s |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Goals: c=1 p50 / in-process <= 2x; c=16 / c=1 parses/s >= 1.6x."
} | tee "$report"
say "wrote $report"
