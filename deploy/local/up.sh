#!/usr/bin/env bash
# Brings refit's whole stack up on this machine: RabbitMQ, the Garage S3 server, ONNX Runtime,
# the coordinator and N workers, each a real background process. Prints on stdout the lines the
# `refit` CLI needs (progress goes to stderr):
#
#   eval "$(deploy/local/up.sh)"          # 2 workers
#   eval "$(deploy/local/up.sh --workers 4)"
#   refit submit --model financial --data examples/data/financial-demo/set1.yml --wait
#   deploy/local/down.sh                  # stop the workers and the coordinator (--all: Garage too)
#
# Idempotent: services already running are left as they are; a coordinator already running is
# kept. Running it again ADDS N workers, numbered after those still alive.
#
# Everything lives in .refit-local/ (git-ignored):
#   coordinator.token     the API token, generated once (mode 600)
#   coordinator.toml      the coordinator's config, written when missing (your edits are kept;
#                         delete it to get a fresh one); add [[schedule]] tables there
#   coordinator.db        the job store
#   coordinator.log/.pid  the coordinator's output and process id
#   coordinator.url       the address it serves (read by down.sh and later runs)
#   worker-<n>.log/.pid   each worker's output and process id
#
# Steps: deploy/rabbitmq.sh, deploy/s3-server.sh (builds Garage the first time: 10-17 minutes),
# deploy/onnxruntime.sh, `cargo build --release -p refit-coordinator -p refit-worker -p refit-cli --bins`,
# then the processes. Secrets (the S3 secret key, the AMQP password) reach the processes through
# their environment and are never printed; the API token is read from its file.
#
# Options:
#   --workers N    workers to add (default 2; 0 starts only the coordinator)
#   --no-build     use the binaries already built (fails if they are missing)
#   -h, --help     this text
#
# Environment:
#   REFIT_PORT         the coordinator's port on 127.0.0.1 (default 8080)
#   REFIT_AMQP_URL     the broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   REFIT_UP_PROFILE   cargo profile of the binaries: release (default) or dev
#   REFIT_WORKER_INTRA_THREADS
#                      ONNX Runtime threads per new worker (default: CPUs / workers alive, at
#                      least 1)
#   REFIT_WORKER_PORT_BASE
#                      worker n serves /healthz, /readyz and /metrics on 127.0.0.1:<base + n>
#                      (default 9090: worker 1 on 9091, what deploy/prometheus/prometheus.yml
#                      scrapes); `off`: not served
#   RUST_LOG           log filter of the processes (default info,lapin=warn,aws=warn,ort=warn)
#   NO_COLOR           the processes' logs are plain text (default 1; set it empty for colours)
#   REFIT__<SECTION>__<KEY>
#                      passed on to the processes (e.g. REFIT__WORKER__DEVICE=auto), except the
#                      settings this script sets itself (listen address, queue URL, S3 settings)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$repo/.refit-local"
port="${REFIT_PORT:-8080}"
amqp_url="${REFIT_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
profile="${REFIT_UP_PROFILE:-release}"
log_filter="${RUST_LOG:-info,lapin=warn,aws=warn,aws_config=warn,aws_smithy_runtime=warn,ort=warn}"
workers=2
build=1

say() { echo "up: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }

while (($#)); do
  case "$1" in
    --workers) [[ $# -ge 2 ]] || die "--workers needs a number"; workers="$2"; shift 2 ;;
    --workers=*) workers="${1#--workers=}"; shift ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
[[ "$workers" =~ ^[0-9]+$ ]] || die "--workers takes a whole number, not '$workers'"
[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "REFIT_PORT must be a port number, not '$port'"
case "$profile" in
  release) bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"; build_flags=(--release) ;;
  dev | debug) bin_dir="${CARGO_TARGET_DIR:-$repo/target}/debug"; build_flags=() ;;
  *) die "REFIT_UP_PROFILE must be release or dev, not '$profile'" ;;
esac
[[ "$bin_dir" = /* ]] || bin_dir="$repo/$bin_dir"

umask 077
mkdir -p "$state"
chmod 700 "$state"

# Whether process $1 is alive and its command line mentions $2.
alive() {
  local pid="$1" name="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# The pid in file $1 if that process is alive and is a $2, else nothing (and status 1).
live_pid() {
  local file="$1" name="$2" pid
  [[ -f "$file" ]] || return 1
  pid="$(cat "$file" 2>/dev/null || true)"
  alive "$pid" "$name" || return 1
  echo "$pid"
}

# Whether GET $1 answers 200.
http_ok() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    local hostport="${1#http://}" path
    path="/${hostport#*/}"
    hostport="${hostport%%/*}"
    timeout 3 bash -c '
      exec 3<>"/dev/tcp/${0%:*}/${0##*:}" || exit 1
      printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" "$0" >&3
      IFS= read -r line <&3
      [[ "$line" == *" 200 "* ]]
    ' "$hostport" "$path" 2>/dev/null
  fi
}

# Whether something accepts connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tail() { tail -n "${2:-20}" "$1" 2>/dev/null | sed 's/^/    /' >&2 || true; }

# ---- services -------------------------------------------------------------------------------

say "RabbitMQ"
"$repo/deploy/rabbitmq.sh" >&2
say "Garage S3 server (built the first time: 10-17 minutes)"
# Its stdout holds the S3 secret key: never shown; the settings are read from credentials.env.
"$repo/deploy/s3-server.sh" >/dev/null
credentials="${REFIT_GARAGE_DIR:-$state/garage}/credentials.env"
[[ -r "$credentials" ]] || die "$credentials is missing although deploy/s3-server.sh succeeded"
# shellcheck disable=SC1090
set -a; . "$credentials"; set +a
for name in REFIT_S3_ENDPOINT REFIT_S3_REGION REFIT_S3_BUCKET REFIT_S3_ACCESS_KEY_ID REFIT_S3_SECRET_ACCESS_KEY; do
  [[ -n "${!name:-}" ]] || die "$credentials does not set $name; remove it and rerun deploy/s3-server.sh"
done
say "ONNX Runtime"
ort_env="$("$repo/deploy/onnxruntime.sh")"
eval "$ort_env"
[[ -n "${ORT_DYLIB_PATH:-}" ]] || die "deploy/onnxruntime.sh printed no ORT_DYLIB_PATH"
export ORT_DYLIB_PATH

# ---- binaries -------------------------------------------------------------------------------

if ((build)); then
  say "building refit-coordinator, refit-worker and refit ($profile; several minutes the first time)"
  (cd "$repo" && cargo build "${build_flags[@]}" -p refit-coordinator -p refit-worker -p refit-cli --bins >&2) ||
    die "cargo build failed (see above)"
fi
coordinator_bin="$bin_dir/refit-coordinator"
worker_bin="$bin_dir/refit-worker"
for bin in "$coordinator_bin" "$worker_bin"; do
  [[ -x "$bin" ]] || die "$bin is missing: run without --no-build (or build it with cargo build ${build_flags[*]} -p refit-coordinator -p refit-worker -p refit-cli --bins)"
done

# ---- token and config -----------------------------------------------------------------------

token_file="$state/coordinator.token"
if [[ ! -s "$token_file" ]]; then
  say "generating the API token in $token_file"
  if command -v openssl >/dev/null; then
    openssl rand -hex 24 >"$token_file"
  else
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$token_file"
    echo >>"$token_file"
  fi
fi
chmod 600 "$token_file"
token="$(tr -d '[:space:]' <"$token_file")"
((${#token} >= 16)) || die "$token_file holds a token shorter than 16 characters; delete it and rerun"

config="$state/coordinator.toml"
if [[ ! -f "$config" ]]; then
  say "writing $config"
  cat >"$config" <<EOF
# refit-coordinator config for the local stack, written by deploy/local/up.sh when missing.
# Your edits are kept (delete this file to get a fresh one). up.sh sets through the environment:
# coordinator.listen (127.0.0.1:\$REFIT_PORT, default 8080), queue.url (\$REFIT_AMQP_URL) and the
# [s3] settings (from .refit-local/garage/credentials.env). See deploy/coordinator.example.toml.

[coordinator]
token_file = "$token_file"
database = "$state/coordinator.db"
management_url = "http://127.0.0.1:15672"

[queue]
pool = "default"
prefix = "refit"

# Scheduled retraining, e.g. every night at 03:00 UTC (restart the coordinator after editing:
# deploy/local/down.sh && deploy/local/up.sh --workers 2):
# [[schedule]]
# name = "financial-nightly"
# model = "financial"
# dataset = "incoming/financial/nlu.yml"
# cron = "0 3 * * *"
# policy = "scratch"
EOF
fi

# What every process gets (on top of the caller's environment).
service_env=(
  "REFIT__QUEUE__URL=$amqp_url"
  "REFIT__S3__ENDPOINT=$REFIT_S3_ENDPOINT"
  "REFIT__S3__REGION=$REFIT_S3_REGION"
  "REFIT__S3__BUCKET=$REFIT_S3_BUCKET"
  "REFIT__S3__ACCESS_KEY_ID=$REFIT_S3_ACCESS_KEY_ID"
  "REFIT__S3__SECRET_ACCESS_KEY=$REFIT_S3_SECRET_ACCESS_KEY"
  "REFIT__S3__FORCE_PATH_STYLE=true"
  "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
  "RUST_LOG=$log_filter"
  "NO_COLOR=${NO_COLOR-1}"
)

# ---- coordinator ----------------------------------------------------------------------------

url_file="$state/coordinator.url"
url="http://127.0.0.1:$port"
if pid="$(live_pid "$state/coordinator.pid" refit-coordinator)"; then
  running_url="$(cat "$url_file" 2>/dev/null || true)"
  if [[ -n "$running_url" && "$running_url" != "$url" && -n "${REFIT_PORT:-}" ]]; then
    die "the coordinator already runs (pid $pid) at $running_url, not $url: run deploy/local/down.sh first to move it"
  fi
  url="${running_url:-$url}"
  say "coordinator already running (pid $pid) at $url"
else
  rm -f "$state/coordinator.pid"
  if port_busy "$port"; then
    die "something else listens on 127.0.0.1:$port: stop it, or choose another port with REFIT_PORT=…"
  fi
  log="$state/coordinator.log"
  say "starting the coordinator on $url (log $log)"
  {
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) deploy/local/up.sh starts refit-coordinator ==="
  } >>"$log"
  (
    cd "$repo"
    exec env "${service_env[@]}" "REFIT__COORDINATOR__LISTEN=127.0.0.1:$port" \
      setsid nohup "$coordinator_bin" --config "$config" </dev/null >>"$log" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$state/coordinator.pid"
  echo "$url" >"$url_file"
  deadline=$((SECONDS + 60))
  until http_ok "$url/healthz"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$state/coordinator.pid" "$url_file"
      say "the coordinator exited during start; the end of $log:"
      log_tail "$log" 30
      die "refit-coordinator did not start (see $log)"
    fi
    if ((SECONDS >= deadline)); then
      say "the end of $log:"
      log_tail "$log" 30
      die "refit-coordinator (pid $pid) did not answer $url/healthz within 60 s; deploy/local/down.sh stops it"
    fi
    sleep 0.2
  done
  say "coordinator ready (pid $pid)"
fi

# ---- workers --------------------------------------------------------------------------------

alive_numbers=()
for file in "$state"/worker-*.pid; do
  [[ -e "$file" ]] || continue
  n="${file##*/worker-}"
  n="${n%.pid}"
  if [[ "$n" =~ ^[0-9]+$ ]] && live_pid "$file" refit-worker >/dev/null; then
    alive_numbers+=("$n")
  else
    rm -f "$file"
  fi
done
highest=0
for n in "${alive_numbers[@]}"; do
  ((10#$n > highest)) && highest=$((10#$n))
done
total=$((${#alive_numbers[@]} + workers))
cpus="$(nproc 2>/dev/null || echo 1)"
threads="${REFIT_WORKER_INTRA_THREADS:-$((total > 0 ? cpus / total : cpus))}"
((threads >= 1)) || threads=1
host="$(hostname -s 2>/dev/null || hostname 2>/dev/null || echo local)"

port_base="${REFIT_WORKER_PORT_BASE:-9090}"
started=()
for ((i = 1; i <= workers; i++)); do
  n=$((highest + i))
  listen=""
  [[ "$port_base" == off ]] || listen="127.0.0.1:$((port_base + n))"
  log="$state/worker-$n.log"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) deploy/local/up.sh starts refit-worker $n ===" >>"$log"
  (
    cd "$repo"
    exec env "${service_env[@]}" "REFIT__WORKER__ID=$host-w$n" "REFIT__WORKER__INTRA_THREADS=$threads" \
      "REFIT__WORKER__LISTEN=$listen" setsid nohup "$worker_bin" </dev/null >>"$log" 2>&1
  ) &
  echo "$!" >"$state/worker-$n.pid"
  started+=("$n")
  say "started worker $n (pid $!, id $host-w$n, $threads ONNX Runtime threads, ${listen:+metrics on http://$listen/metrics, }log $log)"
done

# A worker that cannot start (bad config, no broker) exits within a moment: say so now.
if ((${#started[@]})); then
  sleep 2
  for n in "${started[@]}"; do
    pid="$(cat "$state/worker-$n.pid")"
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$state/worker-$n.pid"
      say "worker $n exited right after starting; the end of $state/worker-$n.log:"
      log_tail "$state/worker-$n.log" 20
      die "worker $n did not start"
    fi
  done
fi

say "stack up: coordinator $url (dashboard $url/#token=…, token in $token_file), $total worker(s) running"
say "logs in $state/; stop with deploy/local/down.sh (--all also stops Garage)"
echo "export REFIT_URL=$url"
echo "export REFIT_TOKEN=$token"
