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
# 4. The management plugin (rabbitmq_management, HTTP API on port 15672) answers, or is enabled
#    with `rabbitmq-plugins enable` (idempotent). The coordinator reads unacknowledged-message
#    counts from it, and the end-to-end tests use it. When it cannot be enabled here (no
#    rabbitmq-plugins, a broker elsewhere) this only warns: the coordinator works without it.
#
# It changes no other broker configuration.
#
#   deploy/rabbitmq.sh users
#
# Creates (or updates) the two least-privilege users a deployment should run with instead of an
# administrator (see deploy/README.md, "Guarantees"), for the queue prefix REFIT_RABBITMQ_PREFIX:
#
#   coordinator  configure ^<P>\.   write ^(<P>\..*|amq\.default)$   read ^<P>\.
#                (declares the topology and the coordinator lock, publishes jobs and dead
#                letters, answers workers through the default exchange; tag `management` for
#                the queue counts it reads from the management API)
#   worker       configure ^amq\.gen-.*$ (its own server-named inbox)
#                write     ^<P>\.events$ (events and presence only; topic permission on
#                          <P>.events: routing keys job.* and worker.* only)
#                read      ^(<P>\.jobs\.(?!dead(\.|$))[^.]+(\.high)?|amq\.gen-.*)$ (the job queues, their
#                          priority queues and inboxes)
#
# so a worker can neither publish a job, nor read the coordinator's queues or the dead letters,
# nor send anything to another worker's inbox (it may not write to the default exchange; an inbox
# is exclusive to its connection anyway). Passwords come from REFIT_RABBITMQ_COORDINATOR_PASSWORD
# and REFIT_RABBITMQ_WORKER_PASSWORD, else from (or into, generated once, mode 600)
# .refit-local/rabbitmq/<user>.password; they are passed to rabbitmqctl on stdin and never
# printed. Prints the two users' AMQP URLs without passwords. Needs rabbitmqctl on this machine.
#
# Environment:
#   REFIT_RABBITMQ_HOST             address to check (default 127.0.0.1)
#   REFIT_RABBITMQ_PORT             AMQP port to check (default 5672)
#   REFIT_RABBITMQ_MANAGEMENT_PORT  management HTTP port to check (default 15672)
#   REFIT_RABBITMQ_MANAGEMENT       0 to leave the management plugin alone (default 1)
#   REFIT_RABBITMQ_START_TIMEOUT    seconds to wait for a started broker or plugin (default 60)
# For `users`:
#   REFIT_RABBITMQ_PREFIX           the deployment's queue prefix, `queue.prefix` (default refit)
#   REFIT_RABBITMQ_VHOST            the virtual host (default /)
#   REFIT_RABBITMQ_COORDINATOR_USER (default <prefix>-coordinator)
#   REFIT_RABBITMQ_WORKER_USER      (default <prefix>-worker)
#   REFIT_RABBITMQ_COORDINATOR_PASSWORD, REFIT_RABBITMQ_WORKER_PASSWORD
set -euo pipefail

host="${REFIT_RABBITMQ_HOST:-127.0.0.1}"
port="${REFIT_RABBITMQ_PORT:-5672}"
management_port="${REFIT_RABBITMQ_MANAGEMENT_PORT:-15672}"
management="${REFIT_RABBITMQ_MANAGEMENT:-1}"
start_timeout="${REFIT_RABBITMQ_START_TIMEOUT:-60}"

say() { echo "rabbitmq: $*" >&2; }
die() { say "error: $*"; exit 1; }

# as_root: root, or sudo without a password prompt.
. "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

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

# Whether the management plugin's HTTP API answers (any HTTP status line will do).
management_answers() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET /api/overview HTTP/1.0\r\nHost: %s\r\n\r\n" "$0" >&3
    IFS= read -r line <&3
    [[ "$line" == HTTP/* ]]
  ' "$host" "$management_port" 2>/dev/null
}

# Step 4: the management plugin answers, or is enabled (idempotent).
ensure_management() {
  [[ "$management" == 0 ]] && return 0
  if management_answers; then
    return 0
  fi
  if ! command -v rabbitmq-plugins >/dev/null || [[ "$host" != 127.0.0.1 && "$host" != localhost ]]; then
    say "warning: the management API does not answer on $host:$management_port and cannot be enabled from here; enable the rabbitmq_management plugin on the broker (the coordinator then reports unacknowledged messages)"
    return 0
  fi
  say "enabling the rabbitmq_management plugin"
  as_root rabbitmq-plugins enable rabbitmq_management >&2
  local deadline=$((SECONDS + start_timeout))
  until management_answers; do
    if ((SECONDS >= deadline)); then
      die "the management plugin is enabled but $host:$management_port did not answer within ${start_timeout} s; see /var/log/rabbitmq/"
    fi
    sleep 1
  done
}

# The local node answers ping (only meaningful when RabbitMQ is installed here).
node_answers() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

# Escapes a name for a RabbitMQ permission regex (dots and the other metacharacters).
regex_escape() { sed 's/[][\.^$*+?(){}|/]/\\&/g' <<<"$1"; }

# A user's password: from the environment, else from its file (generated once, mode 600).
password_for() {
  local user="$1" given="$2" dir="$repo_dir/.refit-local/rabbitmq"
  if [[ -n "$given" ]]; then
    printf '%s' "$given"
    return
  fi
  local file="$dir/$user.password"
  if [[ ! -s "$file" ]]; then
    mkdir -p "$dir"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
    say "generated a password for $user in $file"
  fi
  cat "$file"
}

# Creates the user, or sets its password (read from stdin by rabbitmqctl, never on argv).
put_user() {
  local user="$1" password="$2"
  if as_root rabbitmqctl -q list_users | awk '{print $1}' | grep -qxF "$user"; then
    printf '%s\n' "$password" | as_root rabbitmqctl -q change_password "$user" >/dev/null
  else
    printf '%s\n' "$password" | as_root rabbitmqctl -q add_user "$user" >/dev/null
  fi
}

create_users() {
  command -v rabbitmqctl >/dev/null ||
    die "users: rabbitmqctl is not installed here; create the users on the broker's node (see deploy/README.md)"
  local prefix="${REFIT_RABBITMQ_PREFIX:-refit}" vhost="${REFIT_RABBITMQ_VHOST:-/}"
  local coordinator="${REFIT_RABBITMQ_COORDINATOR_USER:-$prefix-coordinator}"
  local worker="${REFIT_RABBITMQ_WORKER_USER:-$prefix-worker}"
  [[ "$prefix" =~ ^[A-Za-z0-9_-][A-Za-z0-9_.-]*$ ]] || die "users: invalid prefix: $prefix"
  local p
  p="$(regex_escape "$prefix")"
  put_user "$coordinator" "$(password_for "$coordinator" "${REFIT_RABBITMQ_COORDINATOR_PASSWORD:-}")"
  as_root rabbitmqctl -q set_user_tags "$coordinator" management >/dev/null
  as_root rabbitmqctl -q set_permissions -p "$vhost" "$coordinator" \
    "^$p\\." "^($p\\..*|amq\\.default)\$" "^$p\\." >/dev/null
  put_user "$worker" "$(password_for "$worker" "${REFIT_RABBITMQ_WORKER_PASSWORD:-}")"
  as_root rabbitmqctl -q set_user_tags "$worker" >/dev/null
  as_root rabbitmqctl -q set_permissions -p "$vhost" "$worker" \
    '^amq\.gen-.*$' "^$p\\.events\$" "^($p\\.jobs\\.(?!dead(\\.|\$))[^.]+(\\.high)?|amq\\.gen-.*)\$" >/dev/null
  as_root rabbitmqctl -q set_topic_permissions -p "$vhost" "$worker" "$prefix.events" \
    '^(job|worker)\.' '^$' >/dev/null
  local path="${vhost//\//%2f}"
  say "users for queue prefix $prefix on vhost $vhost: $coordinator (coordinator), $worker (worker)"
  echo "REFIT_COORDINATOR_AMQP_URL=amqp://$coordinator@$host:$port/$path"
  echo "REFIT_WORKER_AMQP_URL=amqp://$worker@$host:$port/$path"
}

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
  if [[ "$management" != 0 ]] && management_answers; then
    say "management API: http://$host:$management_port/"
  fi
}

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
  "") ;;
  users)
    ready || die "users: RabbitMQ does not answer on $host:$port; run deploy/rabbitmq.sh first"
    create_users
    exit 0
    ;;
  *) die "unknown argument: $1 (usage: deploy/rabbitmq.sh [users])" ;;
esac

if ready; then
  ensure_management
  report
  exit 0
fi
if amqp_answers; then
  # Something speaks AMQP here but the local node does not answer ping: maybe a broker in a
  # container or another node. Use it rather than start a second one on the same port.
  say "an AMQP broker answers on $host:$port, but the local node does not answer ping; using it"
  if [[ "$management" != 0 ]] && ! management_answers; then
    say "warning: its management API does not answer on $host:$management_port; enable the rabbitmq_management plugin there"
  fi
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
ensure_management
report
