#!/usr/bin/env python3
"""bench/run.sh's measuring and reporting half (standard library only).

For each repeat, for each dataset, for each framework (interleaved, so that a disturbance hits
all frameworks alike rather than all repeats of one): wait until the CPUs are quiet, run ONE
training run in a fresh process (refit: `bench_train train --repeats 1`; a peer:
`peers.py --frameworks X --repeats 1`), and measure how much CPU other processes used meanwhile
(the machine's busy time from /proc/stat minus the child's own CPU time). A run during which
others used more than --quiet-busy percent of the CPUs is repeated, up to --retries times.
Then writes latest.json (everything) and latest.md (the tables) and prints the markdown.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAMES = {
    "refit": "refit",
    "torch": "PyTorch, padded gather+sum",
    "torch_bag": "PyTorch, EmbeddingBag",
    "torch_sparse": "PyTorch, EmbeddingBag + SparseAdam",
    "ort": "ORT training API",
}


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def cpu_times():
    """(busy, total) jiffies over all CPUs; busy includes steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def busy_share(seconds=3.0):
    b0, t0 = cpu_times()
    time.sleep(seconds)
    b1, t1 = cpu_times()
    return 100.0 * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(limit_pct, max_wait):
    busy = busy_share()
    waited = 0.0
    if busy >= limit_pct and max_wait > 0:
        log(f"waiting for the CPUs to be quiet ({busy:.0f}% busy: other processes are running)")
    while busy >= limit_pct and waited < max_wait:
        time.sleep(7)
        waited += 10
        busy = busy_share()
    if busy >= limit_pct:
        log(f"warning: starting on a busy machine ({busy:.0f}% busy)")
    return busy


def run_child(cmd):
    """Runs cmd; returns (stdout, others' CPU share in percent while it ran)."""
    hz = os.sysconf("SC_CLK_TCK")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = cpu_times()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b1, t1 = cpu_times()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in proc.stderr.splitlines():  # progress lines; drop ORT's INFO chatter and warnings
        if not any(s in line for s in ("[I:onnxruntime", "UserWarning", "_C._jit_pass")):
            print("  " + line, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        sys.exit(f"bench: failed ({proc.returncode}): {' '.join(cmd)}")
    own = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) * hz
    others = max(0.0, (b1 - b0) - own)
    return proc.stdout, 100.0 * others / max(t1 - t0, 1)


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release()}


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def report(info, datasets, runs, frameworks):
    m, v = info["machine"], info["versions"]
    md = [f"Command: `{info['command']}` — {info['date']}  ",
          f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}  ",
          f"Versions: refit {v.get('refit')} on ONNX Runtime `{v.get('refit_onnxruntime')}`; "
          f"onnxruntime-training {v.get('onnxruntime-training', '?')}; torch {v.get('torch', '?')}; "
          f"numpy {v.get('numpy', '?')}; Python {v.get('python', '?')}",
          "",
          f"Training throughput in examples/s: median of {info['repeats']} runs (min–max); each run "
          f"a fresh model and process, 1 warm-up epoch, then the timed epochs; "
          f"{info['threads']} threads everywhere.",
          "",
          "| dataset | examples | features | timed epochs | " + " | ".join(NAMES[f] for f in frameworks)
          + " | refit ÷ fastest peer |",
          "|---|---:|---:|---:|" + "---:|" * len(frameworks) + "---:|"]
    med = {}
    for ds in datasets:
        cells = []
        for f in frameworks:
            xs = [r["examples_per_sec"] for r in runs if r["dataset"] == ds["name"] and r["framework"] == f]
            if not xs:
                cells.append("–")
                continue
            med[ds["name"], f] = statistics.median(xs)
            cells.append(f"**{med[ds['name'], f]:,.0f}** ({min(xs):,.0f}–{max(xs):,.0f})")
        peers = [med[ds["name"], f] for f in frameworks if f != "refit" and (ds["name"], f) in med]
        ratio = (f"{med[ds['name'], 'refit'] / max(peers):.2f}×"
                 if (ds["name"], "refit") in med and peers else "–")
        md.append(f"| {ds['name']} | {ds['examples']:,} | {ds['features']:,} | {ds['epochs']} | "
                  + " | ".join(cells) + f" | {ratio} |")
    md += ["",
           "Per framework: mean training loss of the last epoch (median over the runs: a sanity check "
           "that all train the same model), and the share of "
           "the CPUs that other processes used while the kept runs ran (max over the runs; runs over "
           f"{info['quiet_busy']}% were repeated):",
           "",
           "| dataset | " + " | ".join(NAMES[f] for f in frameworks) + " |",
           "|---|" + "---|" * len(frameworks)]
    for ds in datasets:
        cells = []
        for f in frameworks:
            rs = [r for r in runs if r["dataset"] == ds["name"] and r["framework"] == f]
            if not rs:
                cells.append("–")
                continue
            loss = statistics.median(r["final_loss"] for r in rs)
            others = max(r["others_cpu_pct"] for r in rs)
            cells.append(f"loss {loss:.3f}; others {others:.0f}%")
        md.append(f"| {ds['name']} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="bench_train")
    ap.add_argument("--py", required=True, help="the venv's python (for peers.py)")
    ap.add_argument("--dataset", action="append", required=True,
                    help="NAME:EPOCHS:DATA_FILES:FEATURES_JSON (repeatable)")
    ap.add_argument("--frameworks", default="refit,torch,torch_bag,torch_sparse,ort")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quiet-busy", type=float, default=10.0)
    ap.add_argument("--quiet-wait", type=float, default=900.0)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ort-lib", default="")
    ap.add_argument("--command", default="bench/run.sh")
    args = ap.parse_args()

    peers_py = str(Path(__file__).resolve().parent / "peers.py")
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = [f for f in frameworks if f not in NAMES]
    if unknown:
        sys.exit(f"bench: unknown frameworks {unknown}; known: {list(NAMES)}")
    datasets = []
    for spec in args.dataset:
        name, epochs, files, feats = spec.split(":", 3)
        meta = json.loads(Path(feats).read_text())
        datasets.append({"name": name, "epochs": int(epochs), "files": files, "features_file": feats,
                         "examples": len(meta["examples"]), "features": meta["features"],
                         "vocab_rows": meta["vocab_rows"], "intents": meta["intents"], "tags": meta["tags"],
                         "train_options": meta.get("train_options")})

    runs, versions = [], {}
    refit_rev = git_rev()  # the tree bench_train was just built from
    for rep in range(args.repeats):
        seed = args.seed + rep
        for ds in datasets:
            for fw in frameworks:
                if fw == "refit":
                    cmd = [args.bin, "train", "--data", ds["files"], "--epochs", str(ds["epochs"]),
                           "--repeats", "1", "--threads", str(args.threads), "--seed", str(seed)]
                else:
                    cmd = [args.py, peers_py, "--data", ds["features_file"], "--frameworks", fw,
                           "--epochs", str(ds["epochs"]), "--repeats", "1",
                           "--threads", str(args.threads), "--seed", str(seed)]
                for attempt in range(args.retries + 1):
                    log(f"run {rep + 1}/{args.repeats}: {ds['name']}: {fw} (1 + {ds['epochs']} epochs)"
                        + (f", attempt {attempt + 1}" if attempt else ""))
                    busy = wait_quiet(args.quiet_busy, args.quiet_wait)
                    out, others = run_child(cmd)
                    if others < args.quiet_busy:
                        break
                    log(f"other processes used {others:.0f}% of the CPUs during this run"
                        + ("; repeating it" if attempt < args.retries else "; keeping it"))
                result = json.loads(out.strip().splitlines()[-1])
                versions.update(result.get("versions", {}))
                r = dict(result["runs"][0])
                r.update(dataset=ds["name"], framework=fw, seed=seed, attempts=attempt + 1,
                         cpu_busy_before_pct=busy, others_cpu_pct=others)
                runs.append(r)

    ort_lib = os.path.realpath(args.ort_lib) if args.ort_lib else ""
    versions.update(refit=refit_rev, refit_onnxruntime=os.path.basename(ort_lib))
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": args.command, "machine": machine(), "versions": versions,
            "repeats": args.repeats, "threads": args.threads, "quiet_busy": args.quiet_busy}
    out = Path(args.out)
    (out / "latest.json").write_text(json.dumps({**info, "datasets": datasets, "runs": runs}, indent=1) + "\n")
    md = report(info, datasets, runs, frameworks)
    (out / "latest.md").write_text(md)
    print(md, end="")


if __name__ == "__main__":
    main()
