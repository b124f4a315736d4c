#!/usr/bin/env bash
# How much `refit demo`'s scores move with the seed: runs the demo once per seed and summarises
# v1/v2/v3 and the v2 - v3 gaps, next to what two scratch retrains (v3 with two different seeds)
# give, which is the noise floor of the test set.
#
#   bench/demo-seeds.sh                  # 16 seeds: 42 (the demo's default) and 1..15
#   bench/demo-seeds.sh 42 7 9           # these seeds
#   DATA=DIR bench/demo-seeds.sh         # another folder with set1.yml, set2.yml, test.yml
#
# Env: REFIT (the refit binary; default target/release/refit, built if missing), DATA (passed as
# --data), BAND (the gap band, default 0.02), KEEP (folder for each seed's JSON; default a temp
# folder, removed at the end). Runs one demo at a time so the training times are not disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=("$@")
if [ ${#seeds[@]} -eq 0 ]; then
    seeds=(42 $(seq 1 15))
fi
band="${BAND:-0.02}"
refit="${REFIT:-target/release/refit}"
if [ ! -x "$refit" ]; then
    echo "demo-seeds: building $refit" >&2
    cargo build --release -p refit-cli --bin refit >&2
fi
deploy/onnxruntime.sh > /dev/null

keep="${KEEP:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
results="${keep:-$work/results}"
mkdir -p "$results"

data_args=()
if [ -n "${DATA:-}" ]; then
    data_args=(--data "$DATA")
fi

for seed in "${seeds[@]}"; do
    echo "demo-seeds: seed $seed" >&2
    # Exit status 11 means the fine-tune was refused; the summary reports that per seed.
    "$refit" demo "${data_args[@]}" --seed "$seed" --out "$work/out-$seed" --output json \
        > "$results/$seed.json" 2> "$work/stderr-$seed" || {
        status=$?
        if [ "$status" -ne 11 ]; then
            cat "$work/stderr-$seed" >&2
            echo "demo-seeds: refit demo --seed $seed failed (exit $status)" >&2
            exit "$status"
        fi
    }
    rm -rf "$work/out-$seed"
done

python3 - "$results" "$band" "${seeds[@]}" <<'PY'
import itertools
import json
import statistics
import sys

folder, band, seeds = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
runs = {}
for seed in seeds:
    with open(f"{folder}/{seed}.json") as f:
        runs[seed] = {r["name"]: r for r in json.load(f)["runs"]}

IWF, EF = "intent_weighted_f1", "entity_f1"
print(f"{'seed':>5}  {'v1 int/ent':>13}  {'v2 int/ent':>13}  {'v3 int/ent':>13}  "
      f"{'v2-v3 int/ent':>15}  v2 time")
gaps = []
for seed in seeds:
    r = runs[seed]
    cells = [f"{r[v][IWF]:.3f}/{r[v][EF]:.3f}" if v in r else "-" for v in ("v1", "v2", "v3")]
    if "v2" in r:
        gi, ge = r["v2"][IWF] - r["v3"][IWF], r["v2"][EF] - r["v3"][EF]
        ratio = r["v2"]["train_seconds"] / r["v3"]["train_seconds"]
        gaps.append((gi, ge, ratio))
        tail = f"{gi:+.3f}/{ge:+.3f}  {ratio:.2f}x"
    else:
        tail = "no fine-tune"
    print(f"{seed:>5}  {cells[0]:>13}  {cells[1]:>13}  {cells[2]:>13}  {tail:>15}")


def spread(xs):
    sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    return f"mean {statistics.mean(xs):.3f}  sd {sd:.3f}  min {min(xs):.3f}  max {max(xs):.3f}"


print(f"\n{len(seeds)} seeds")
for v in ("v1", "v2", "v3"):
    have = [runs[s][v] for s in seeds if v in runs[s]]
    if have:
        print(f"{v} intent weighted-F1: {spread([x[IWF] for x in have])}")
        print(f"{v} entity F1:          {spread([x[EF] for x in have])}")
if gaps:
    n = len(gaps)
    inside = lambda xs: sum(abs(x) <= band + 1e-9 for x in xs)
    gi, ge = [g[0] for g in gaps], [g[1] for g in gaps]
    print(f"v2 - v3 intent weighted-F1: {spread(gi)}  within ±{band}: {inside(gi)}/{n}")
    print(f"v2 - v3 entity F1:          {spread(ge)}  within ±{band}: {inside(ge)}/{n}")
    both = sum(abs(a) <= band + 1e-9 and abs(b) <= band + 1e-9 for a, b in zip(gi, ge))
    print(f"v2 within ±{band} of v3 on both: {both}/{n}")
    print(f"v2 time / v3 time: {spread([g[2] for g in gaps])}")
v3 = [runs[s]["v3"] for s in seeds if "v3" in runs[s]]
pairs = list(itertools.combinations(v3, 2))
if pairs:
    close = sum(abs(a[IWF] - b[IWF]) <= band + 1e-9 and abs(a[EF] - b[EF]) <= band + 1e-9
                for a, b in pairs)
    print(f"noise floor: two scratch retrains (v3, different seeds) within ±{band} on both: "
          f"{close}/{len(pairs)} pairs ({100 * close / len(pairs):.0f}%)")
PY
