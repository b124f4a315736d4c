#!/usr/bin/env bash
# Checks the deployment manifests: the YAML under deploy/, the Compose file and every Kubernetes
# overlay, offline. Installs its tools when missing, then prints one OK/FAIL line per check and
# exits 1 if any failed. Idempotent; a few seconds once the tools are installed.
#
#   deploy/manifests.sh
#
# Checks:
#   yamllint      `yamllint -s` (warnings fail too) on every *.yml/*.yaml under deploy/, with the
#                 repository's .yamllint
#   compose       `docker-compose -f deploy/compose.yaml config -q` (docker-compose 1.29, or
#                 `docker compose` v2 when that is what is installed)
#   k8s <name>    `kubectl kustomize` of deploy/k8s/overlays/<name> (and of dev-secrets, and of
#                 the gpu overlay with components/irsa), then:
#                   - every Kubernetes object: `kubernetes-validate --strict` (unknown fields are
#                     errors) for Kubernetes $REFIT_K8S_VERSION; a ScaledJob's jobTargetRef is
#                     also checked as a batch/v1 Job, a ScaledObject's HPA behavior as an
#                     autoscaling/v2 HorizontalPodAutoscaler;
#                   - every KEDA object (not in Kubernetes' schemas): deploy/k8s/validate-keda.mjs,
#                     the CRD schema of the npm package @kubernetes-models/keda plus unknown-field,
#                     rabbitmq and metrics-api trigger (parameters, TriggerAuthentication) and
#                     fallback checks
#   self-test     proves the validators reject broken objects: a Deployment with a misspelled
#                 field (kubernetes-validate --strict), and broken copies of the overlays' KEDA
#                 objects (validate-keda.mjs --self-test)
#
# Tools (installed if missing): yamllint and kubernetes-validate 1.37.x (PyPI) in the venv
# .venv-deploy/; docker-compose (Debian package, with apt-get as root or passwordless sudo);
# @kubernetes-models/keda (npm) in .venv-deploy/node/. kubectl (for its built-in kustomize),
# python3, node and npm must be on PATH.
#
# Environment:
#   REFIT_K8S_VERSION   the Kubernetes version to validate against (default 1.33.0; any the
#                       kubernetes-validate package ships: 1.2x–1.37)
#   REFIT_DEPLOY_VENV   the venv (default <repo>/.venv-deploy)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${REFIT_DEPLOY_VENV:-$repo/.venv-deploy}"
k8s_version="${REFIT_K8S_VERSION:-1.33.0}"
keda_version="2.0.0"          # @kubernetes-models/keda: the KEDA v2 CRDs (2.16+)
node_dir="$venv/node"

say() { echo "manifests: $*" >&2; }
die() { say "error: $*"; exit 2; }

# as_root: root, or sudo without a password prompt.
. "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

# --- tools ----------------------------------------------------------------------------------
for tool in kubectl python3 node npm; do
  command -v "$tool" >/dev/null || die "$tool is missing (kubectl: https://kubernetes.io/docs/tasks/tools/)"
done

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi
if [[ ! -x "$venv/bin/yamllint" ]] ||
  ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("kubernetes-validate").startswith("1.37."))' 2>/dev/null; then
  say "installing yamllint and kubernetes-validate 1.37.x into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check yamllint 'kubernetes-validate>=1.37,<1.38' >&2
fi

compose=()
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  command -v apt-get >/dev/null || die "docker-compose is missing and apt-get is not here"
  say "installing docker-compose with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    --no-install-recommends docker-compose >&2 ||
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >&2 &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends docker-compose >&2; }
  compose=(docker-compose)
fi

if [[ ! -f "$node_dir/node_modules/@kubernetes-models/keda/package.json" ]]; then
  say "installing @kubernetes-models/keda@$keda_version into $node_dir"
  mkdir -p "$node_dir"
  [[ -f "$node_dir/package.json" ]] || echo '{"name": "refit-deploy-tools", "private": true}' >"$node_dir/package.json"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund "@kubernetes-models/keda@$keda_version" >&2)
fi

# --- checks ---------------------------------------------------------------------------------
work="$(mktemp -d)"
trap '[[ -n "${REFIT_MANIFESTS_KEEP:-}" ]] || rm -rf "$work"' EXIT
failures=0
report() { # NAME STATUS LOGFILE
  if [[ "$2" == 0 ]]; then
    echo "OK   $1"
  else
    echo "FAIL $1"
    sed 's/^/       /' "$3"
    failures=$((failures + 1))
  fi
}
run_check() { # NAME COMMAND...
  local name="$1" log="$work/log" status=0
  shift
  "$@" >"$log" 2>&1 || status=$?
  report "$name" "$status" "$log"
}

# Splits `kubectl kustomize` output (DIR/all.yaml) into DIR/k8s.yaml (Kubernetes objects, plus a Job
# and an HPA made from the KEDA objects' embedded Kubernetes parts) and DIR/keda.json.
split() { # DIR
  "$venv/bin/python" - "$1" <<'PY'
import json, sys, yaml
out = sys.argv[1]
with open(f"{out}/all.yaml") as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
KEDA = {"ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"}
k8s, keda = [], []
for d in docs:
    if d.get("apiVersion", "").startswith("keda.sh/") or d.get("kind") in KEDA:
        keda.append(d)
        name = d.get("metadata", {}).get("name", "x")
        ns = d.get("metadata", {}).get("namespace")
        meta = {"name": f"{name}-keda-check", **({"namespace": ns} if ns else {})}
        spec = d.get("spec", {})
        if d.get("kind") == "ScaledJob" and "jobTargetRef" in spec:
            k8s.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                        "spec": spec["jobTargetRef"]})
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            k8s.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                                 "maxReplicas": 1, "behavior": behavior}})
    else:
        k8s.append(d)
with open(f"{out}/k8s.yaml", "w") as f:
    yaml.safe_dump_all(k8s, f, sort_keys=False)
with open(f"{out}/keda.json", "w") as f:
    json.dump(keda, f)
if not k8s:
    sys.exit("no Kubernetes objects in the build")
print(f"{len(k8s)} Kubernetes objects, {len(keda)} KEDA objects")
PY
}

validate_k8s() { # DIR
  "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$k8s_version" "$1/k8s.yaml"
}
validate_keda() { # DIR
  if [[ "$(cat "$1/keda.json")" == "[]" ]]; then echo "no KEDA objects"; return 0; fi
  node deploy/k8s/validate-keda.mjs "$node_dir/node_modules" "$1/keda.json"
}

# yamllint: every YAML file under deploy/ (compose, k8s, prometheus, grafana, …).
mapfile -t yaml_files < <(find deploy -type f \( -name '*.yml' -o -name '*.yaml' \) -not -path '*/node_modules/*' | sort)
run_check "yamllint (${#yaml_files[@]} files under deploy/)" "$venv/bin/yamllint" -s -c .yamllint "${yaml_files[@]}"

run_check "compose: ${compose[*]} -f deploy/compose.yaml config -q" "${compose[@]}" -f deploy/compose.yaml config -q

# Kubernetes: each overlay, the dev secrets, and the gpu overlay with the IRSA component.
targets=()
for dir in deploy/k8s/overlays/*/; do targets+=("${dir%/}"); done
targets+=(deploy/k8s/dev-secrets)
irsa="$work/irsa"
mkdir -p "$irsa"
rel="$(realpath --relative-to="$irsa" "$repo/deploy/k8s")"
printf 'resources:\n  - %s/overlays/gpu\ncomponents:\n  - %s/components/irsa\n' "$rel" "$rel" >"$irsa/kustomization.yaml"
targets+=("$irsa")

keda_all="$work/keda-all.json"
echo "[]" >"$keda_all"
for target in "${targets[@]}"; do
  label="${target#deploy/k8s/}"
  [[ "$target" == "$irsa" ]] && label="overlays/gpu + components/irsa"
  out="$work/out-$(echo "$label" | tr -c 'a-zA-Z0-9\n' '_')"
  mkdir -p "$out"
  log="$work/log"
  status=0
  # Both validators run even when the first finds errors, so one run shows all of them.
  {
    kubectl kustomize "$target" >"$out/all.yaml" && split "$out" &&
      { k8s_status=0; validate_k8s "$out" || k8s_status=$?; validate_keda "$out" && ((k8s_status == 0)); }
  } >"$log" 2>&1 || status=$?
  report "k8s $label: kustomize, kubernetes-validate --strict $k8s_version, KEDA schema" "$status" "$log"
  if [[ -s "$out/keda.json" ]]; then
    "$venv/bin/python" -c 'import json,sys; a=json.load(open(sys.argv[1])); a+=json.load(open(sys.argv[2])); json.dump(a, open(sys.argv[1], "w"))' \
      "$keda_all" "$out/keda.json"
  fi
done

# Self-tests: each validator must reject what it is there to catch.
broken="$work/broken.yaml"
cat >"$broken" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: c
          image: x
          imagePullPolcy: IfNotPresent
EOF
log="$work/log"
if "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$k8s_version" "$broken" >"$log" 2>&1; then
  echo "kubernetes-validate --strict accepted a Deployment with the misspelled field imagePullPolcy" >"$log"
  report "self-test: kubernetes-validate --strict rejects an unknown field" 1 "$log"
else
  report "self-test: kubernetes-validate --strict rejects an unknown field ($(grep -o 'imagePullPolcy' "$log" | head -n 1) named)" \
    "$(grep -q imagePullPolcy "$log" && echo 0 || echo 1)" "$log"
fi
run_check "self-test: validate-keda.mjs rejects broken copies of the overlays' KEDA objects" \
  node deploy/k8s/validate-keda.mjs "$node_dir/node_modules" --self-test "$keda_all"
# What each breakage was rejected with (on failure the lines are above already).
grep '^ok ' "$work/log" | sed 's/^ok  */       /' || true

if ((failures)); then
  say "$failures check(s) failed"
  exit 1
fi
say "all checks passed"
