#!/usr/bin/env bash
# Checks refit's monitoring files with promtool (from deploy/promtool.sh) and python3; a few
# seconds, no server needed:
#
#   deploy/prometheus/check.sh
#
#   1. promtool check config  deploy/prometheus/prometheus.yml and kubernetes.yml (this also checks
#      the rule files they name). Debian's promtool is built without Kubernetes discovery; it then
#      checks kubernetes.yml with its kubernetes_sd_configs swapped for empty static_configs (the
#      relabel rules are still checked) and says so.
#   2. promtool check rules   deploy/prometheus/alerts.yml
#   3. promtool test rules    deploy/prometheus/alerts.test.yml, and that it has, for every alert,
#      a case where the alert fires and one where it does not.
#   4. deploy/grafana/refit.json: valid JSON; uid, title, refresh; unique panel ids; no row panels;
#      every panel has targets, each with a refId (unique in the panel) and a non-empty expr that
#      uses no template variable but $pool, $worker and $__rate_interval.
#   5. Every dashboard expr, with $pool and $worker replaced by .* and $__rate_interval by 1m (as
#      the integration test does), parsed by promtool as a recording rule in a generated rules
#      file.
#
# Exits non-zero on the first failure. Needs bash, python3 and (root or passwordless sudo for)
# apt-get the first time, to install promtool.
set -euo pipefail

say() { echo "prometheus-check: $*" >&2; }
die() { say "error: $*"; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="$(dirname "$here")"
dashboard="$deploy/grafana/refit.json"
command -v python3 >/dev/null || die "python3 is needed"
promtool="$("$deploy/promtool.sh")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Scrape configs (and the rule files they name).
"$promtool" check config "$here/prometheus.yml"
if ! out="$("$promtool" check config "$here/kubernetes.yml" 2>&1)"; then
  if grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
    say "this promtool has no Kubernetes discovery (Debian's build): checking kubernetes.yml with"
    say "its kubernetes_sd_configs replaced by empty static_configs"
    cp "$here/alerts.yml" "$work/alerts.yml"
    python3 - "$here/kubernetes.yml" "$work/kubernetes.yml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
swapped, n = re.subn(r"kubernetes_sd_configs:\n((?:[ \t]*#.*\n)*)([ \t]+)- role: \w+\n",
                     r"static_configs:\n\1\2- targets: []\n", text)
if n == 0:
    sys.exit("kubernetes.yml: no 'kubernetes_sd_configs:' followed by '- role: ...' to swap")
open(sys.argv[2], "w").write(swapped)
PY
    "$promtool" check config "$work/kubernetes.yml"
  else
    echo "$out" >&2
    die "promtool check config kubernetes.yml failed"
  fi
else
  echo "$out"
fi

# 2. and 3. Alerting rules and their unit tests.
"$promtool" check rules "$here/alerts.yml"
"$promtool" test rules "$here/alerts.test.yml"
python3 - "$here/alerts.yml" "$here/alerts.test.yml" <<'PY'
import re, sys
alerts = re.findall(r"^\s*- alert:\s*(\S+)\s*$", open(sys.argv[1]).read(), re.M)
if not alerts:
    sys.exit("alerts.yml: no alerts found")
fires, quiet = set(), set()
current = None
for line in open(sys.argv[2]):
    m = re.match(r"^\s*-?\s*alertname:\s*(\S+)\s*$", line)
    if m:
        current = m.group(1)
        continue
    m = re.match(r"^\s*exp_alerts:\s*(\[\])?\s*$", line)
    if m and current:
        (quiet if m.group(1) else fires).add(current)
        current = None
missing = [f"{a} (no case where it fires)" for a in alerts if a not in fires]
missing += [f"{a} (no case where it stays quiet)" for a in alerts if a not in quiet]
if missing:
    sys.exit("alerts.test.yml lacks tests: " + "; ".join(missing))
print(f"  SUCCESS: {len(alerts)} alerts, each tested firing and quiet")
PY

# 4. The Grafana dashboard; writes its exprs as recording rules for 5.
python3 - "$dashboard" "$work/dashboard-rules.yml" <<'PY'
import json, re, sys
path = sys.argv[1]
try:
    dash = json.load(open(path))
except ValueError as e:
    sys.exit(f"{path}: not valid JSON: {e}")
problems = []
for key, want in (("uid", None), ("title", None), ("refresh", "30s")):
    if not dash.get(key) or (want and dash[key] != want):
        problems.append(f"dashboard {key} is {dash.get(key)!r}")
names = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
for var in ("datasource", "pool", "worker"):
    if var not in names:
        problems.append(f"no template variable {var}")
ids, rules = set(), []
panels = dash.get("panels") or []
if not panels:
    problems.append("no panels")
for p in panels:
    pid, title = p.get("id"), p.get("title", "?")
    where = f"panel {pid} ({title})"
    if p.get("type") == "row" or "panels" in p:
        problems.append(f"{where}: row panels are not used here (keep every panel at the top level)")
    if pid in ids or not isinstance(pid, int):
        problems.append(f"{where}: id missing or not unique")
    ids.add(pid)
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"{where}: no targets")
    refs = set()
    for t in targets:
        ref, expr = t.get("refId"), (t.get("expr") or "").strip()
        if not ref or ref in refs:
            problems.append(f"{where}: refId {ref!r} missing or repeated")
        refs.add(ref)
        if not expr:
            problems.append(f"{where} {ref}: empty expr")
            continue
        other = set(re.findall(r"\$\{?\w+", expr)) - {"$pool", "$worker", "$__rate_interval"}
        if other:
            problems.append(f"{where} {ref}: template variables other than $pool, $worker, $__rate_interval: {sorted(other)}")
        promql = expr.replace("$__rate_interval", "1m").replace("$pool", ".*").replace("$worker", ".*")
        rules.append({"record": f"dashboard:panel_{pid}:{ref}", "expr": promql})
if problems:
    sys.exit(f"{path}:\n  " + "\n  ".join(problems))
# JSON is YAML: a rules file promtool reads.
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"), indent=1)
print(f"  SUCCESS: {path}: {len(panels)} panels, {len(rules)} queries")
PY

# 5. Every dashboard query parses.
echo "Parsing the dashboard's queries"
"$promtool" check rules "$work/dashboard-rules.yml"
say "all checks passed"
