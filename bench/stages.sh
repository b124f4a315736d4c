#!/usr/bin/env bash
# Where a job's wall time goes: per-stage timings of real jobs on the local stack (release
# binaries, one worker, RabbitMQ and Garage on this machine), for BENCHMARKS.md.
#
#   bench/stages.sh                 # restarts the local stack with 1 worker, runs the jobs, prints a table
#   bench/stages.sh --keep          # leave the stack running afterwards
#
# Jobs, one at a time on an idle pool (the worker waiting for work):
#   small     financial-demo set1, 20 epochs, evaluated on test.yml
#   1-minute  financial-demo set1+set2, epochs chosen from a probe so that training takes ~60 s,
#             evaluated on test.yml
# Each job runs 3 times; the table shows medians. For each: the job's own timings (queue_wait:
# submit to lease; download; load: parse, featurize, build or load the model; train; evaluate;
# export; upload), the wall time from submit to `succeeded` as the coordinator recorded it, the
# share of the wall time that is not training, and the time from `refit submit` returning to
# the worker's `started` event (sent right before the first training step).
#
# It stops any local stack first (deploy/local/down.sh) and starts one with exactly one worker
# (deploy/local/up.sh --workers 1), so that the pool is idle and nothing else competes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  "") ;;
  *) echo "bench/stages.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

deploy/local/down.sh >&2 || true
eval "$(deploy/local/up.sh --workers 1)"
[[ $keep -eq 1 ]] || trap 'deploy/local/down.sh >&2 || true' EXIT

data=examples/data/financial-demo
refit=target/release/refit
model="stages-$(date +%s)"

python3 - "$refit" "$model" "$data" <<'PY'
import json, os, statistics, subprocess, sys, time, urllib.request
from datetime import datetime

refit, model, data = sys.argv[1:4]
url, token = os.environ["REFIT_URL"], os.environ["REFIT_TOKEN"]

def api(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

def wait_idle():
    # The worker is idle: no job queued or running in its pool.
    for _ in range(600):
        pools = api("/v1/pools")["pools"]
        if all(p["demand"] == 0 for p in pools):
            return
        time.sleep(0.5)
    sys.exit("the pool did not become idle")

def run(files, epochs):
    wait_idle()
    time.sleep(2)
    args = [refit, "submit", "--model", model, "--mode", "scratch", "--epochs", str(epochs),
            "--eval", f"{data}/test.yml", "--output", "json", "--data", *files]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    submitted_cli = time.time()
    job_id = json.loads(out)["job"]["id"]
    while True:
        job = api(f"/v1/jobs/{job_id}?events_limit=1000")
        if job["state"] in ("succeeded", "failed", "dead", "cancelled"):
            break
        time.sleep(0.5)
    if job["state"] != "succeeded":
        sys.exit(f"job {job_id} ended {job['state']}: {job.get('error')}")
    t = dict(job["timings"])
    wall = ts(job["finished_at"]) - ts(job["submitted_at"])
    started = [e for e in job["events"] if e["type"] == "started"]
    first_step = ts(started[0]["received_at"]) - ts(job["submitted_at"]) if started else float("nan")
    t.update(wall=wall, first_step=first_step, not_training=(wall - t.get("train", 0)) / wall)
    t.setdefault("evaluate", 0.0)
    return t

set1, both = [f"{data}/set1.yml"], [f"{data}/set1.yml", f"{data}/set2.yml"]
probe = run(both, 30)
epochs = max(30, round(30 * 60.0 / probe["train"]))
print(f"probe: 30 epochs trained in {probe['train']:.2f} s -> {epochs} epochs for ~60 s", file=sys.stderr)

cols = ["queue_wait", "download", "load", "train", "evaluate", "export", "upload", "wall",
        "not_training", "first_step"]
rows = []
for name, files, n in [("small (set1, 20 epochs)", set1, 20), (f"1-minute (set1+set2, {epochs} epochs)", both, epochs)]:
    runs = [run(files, n) for _ in range(3)]
    med = {c: statistics.median(r.get(c, 0.0) for r in runs) for c in cols}
    rows.append((name, med))
    print(f"{name}: done", file=sys.stderr)

print("| job | " + " | ".join(cols[:8]) + " | not training | submit → first step |")
print("| --- |" + " ---: |" * 10)
for name, m in rows:
    cells = [f"{m[c]:.2f} s" for c in cols[:8]]
    cells += [f"{100 * m['not_training']:.1f} %", f"{m['first_step']:.2f} s"]
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
