#!/usr/bin/env bash
# Stops what deploy/local/up.sh started: the workers first (each gets SIGTERM, checkpoints its
# running job and hands it back to the queue), then the coordinator; whatever has not exited
# after the grace period gets SIGKILL. Removes the pid files. Idempotent: with nothing running it
# says so and exits 0. Logs, the job store, the token and the config in .refit-local/ are kept.
#
#   deploy/local/down.sh          # workers and coordinator
#   deploy/local/down.sh --all    # … and the Garage S3 server (deploy/s3-server.sh stop)
#
# RabbitMQ is a system service shared with other users of this machine: it is left running
# (stop it with `systemctl stop rabbitmq-server` or `rabbitmqctl stop`).
#
# Environment:
#   REFIT_DOWN_WORKER_GRACE       seconds workers get after SIGTERM (default 45: their
#                                 shutdown_deadline_secs of 30 plus the checkpoint upload)
#   REFIT_DOWN_COORDINATOR_GRACE  seconds the coordinator gets after SIGTERM (default 20)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
state="$repo/.refit-local"
worker_grace="${REFIT_DOWN_WORKER_GRACE:-45}"
coordinator_grace="${REFIT_DOWN_COORDINATOR_GRACE:-20}"
all=0

say() { echo "down: $*" >&2; }
die() { say "error: $*"; exit 1; }

while (($#)); do
  case "$1" in
    --all) all=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $1 (expected --all)" ;;
  esac
done
[[ "$worker_grace" =~ ^[0-9]+$ && "$coordinator_grace" =~ ^[0-9]+$ ]] ||
  die "REFIT_DOWN_WORKER_GRACE and REFIT_DOWN_COORDINATOR_GRACE must be whole seconds"

# Whether process $1 is alive and its command line mentions $2 (a recycled pid is not ours).
alive() {
  local pid="$1" name="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# Stops the processes of the given pid files (all of kind $1) together: SIGTERM, wait up to
# $2 seconds, SIGKILL what is left; removes the pid files.
stop_all() {
  local name="$1" grace="$2"
  shift 2
  local file pid pids=() files=()
  for file in "$@"; do
    [[ -e "$file" ]] || continue
    pid="$(cat "$file" 2>/dev/null || true)"
    if alive "$pid" "$name"; then
      say "stopping $name pid $pid (${file##*/})"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    else
      say "${file##*/}: pid ${pid:-?} is not running; removing the stale pid file"
    fi
    files+=("$file")
  done
  local deadline=$((SECONDS + grace)) left
  while :; do
    left=()
    for pid in "${pids[@]}"; do
      alive "$pid" "$name" && left+=("$pid")
    done
    ((${#left[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      say "$name pid(s) ${left[*]} still running after ${grace} s: SIGKILL"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  ((${#files[@]})) && rm -f "${files[@]}"
  return 0
}

shopt -s nullglob
worker_files=("$state"/worker-*.pid)
coordinator_files=()
[[ -e "$state/coordinator.pid" ]] && coordinator_files=("$state/coordinator.pid")

if ((${#worker_files[@]} == 0 && ${#coordinator_files[@]} == 0)); then
  say "no coordinator or worker pid files in $state: nothing to stop"
else
  ((${#worker_files[@]})) && stop_all refit-worker "$worker_grace" "${worker_files[@]}"
  ((${#coordinator_files[@]})) && stop_all refit-coordinator "$coordinator_grace" "${coordinator_files[@]}"
  rm -f "$state/coordinator.url"
  say "stopped; logs, job store, token and config are kept in $state/"
fi

if ((all)); then
  say "stopping the Garage S3 server"
  "$repo/deploy/s3-server.sh" stop >&2
  say "RabbitMQ is left running (a system service)"
fi
