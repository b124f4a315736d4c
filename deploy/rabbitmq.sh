#!/usr/bin/env bash
# Makes sure RabbitMQ answers AMQP on 127.0.0.1:5672, the broker refit's tests and local stack use.
# Idempotent: when it already answers, this returns in about a second.
#
#   deploy/rabbitmq.sh
#
# 1. Something answers AMQP 0-9-1 on the port (and, where rabbitmq-diagnostics is installed, the
#    local node answers `ping`)  -> done.
# 2. rabbitmq-server is installed but not running  -> start it (systemd when the machine runs it,
#    else `rabbitmq-server -detached`) and wait until it answers.
# 3. rabbitmq-server is not installed  -> `apt-get install rabbitmq-server` (as root, or with sudo),
#    then 2.
#
# It enables no plugins and changes no broker configuration.
#
# Environment:
#   REFIT_RABBITMQ_HOST           address to check (default 127.0.0.1)
#   REFIT_RABBITMQ_PORT           AMQP port to check (default 5672)
#   REFIT_RABBITMQ_START_TIMEOUT  seconds to wait for a started broker (default 60)
set -euo pipefail

host="${REFIT_RABBITMQ_HOST:-127.0.0.1}"
port="${REFIT_RABBITMQ_PORT:-5672}"
start_timeout="${REFIT_RABBITMQ_START_TIMEOUT:-60}"

say() { echo "rabbitmq: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Root, or sudo without a password prompt; empty when neither (then installing/starting fails).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# Whether an AMQP 0-9-1 broker answers: send the protocol header and expect a method frame
# (connection.start, frame type 1) back.
amqp_answers() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    first=$(head -c 1 <&3 | od -An -tu1 | tr -d " ")
    [[ "$first" == 1 ]]
  ' "$host" "$port" 2>/dev/null
}

have_diagnostics() { command -v rabbitmq-diagnostics >/dev/null; }

# The local node answers ping (only meaningful when RabbitMQ is installed here).
node_answers() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

ready() {
  amqp_answers || return 1
  if have_diagnostics && [[ "$host" == 127.0.0.1 || "$host" == localhost ]]; then
    node_answers || return 1
  fi
}

report() {
  local version=""
  if have_diagnostics; then
    version="$(as_root rabbitmqctl -q version 2>/dev/null || true)"
  fi
  say "ready on $host:$port${version:+ (RabbitMQ $version)}"
  say "URL: amqp://guest:guest@$host:$port/%2f (REFIT_TEST_AMQP_URL; guest works from loopback only)"
}

if ready; then
  report
  exit 0
fi
if amqp_answers; then
  # Something speaks AMQP here but the local node does not answer ping: maybe a broker in a
  # container or another node. Use it rather than start a second one on the same port.
  say "an AMQP broker answers on $host:$port, but the local node does not answer ping; using it"
  report
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null; then
  command -v apt-get >/dev/null ||
    die "rabbitmq-server is not installed and apt-get is missing: install RabbitMQ ≥ 3.10 by hand"
  say "installing rabbitmq-server with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
  # The package may have started it already.
fi

if ! ready; then
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    say "starting rabbitmq-server (systemctl)"
    as_root systemctl start rabbitmq-server
  elif ! node_answers; then
    say "starting rabbitmq-server -detached"
    as_root rabbitmq-server -detached
  fi
  say "waiting up to ${start_timeout} s for $host:$port"
  deadline=$((SECONDS + start_timeout))
  until ready; do
    if ((SECONDS >= deadline)); then
      die "RabbitMQ did not answer on $host:$port within ${start_timeout} s; see /var/log/rabbitmq/"
    fi
    sleep 1
  done
fi
report
