#!/usr/bin/env bash
# A RabbitMQ cluster of N nodes on this machine, beside the broker of deploy/rabbitmq.sh (which
# it never touches): for trying refit against node loss, and for the tests that stop a broker
# (tests/integration/broker/). Each node has its own name, ports, data and logs under DIR.
#
#   deploy/rabbitmq-cluster.sh start [N]    start N nodes (default 3) and join them into one
#                                           cluster; prints their AMQP URLs, one per line
#   deploy/rabbitmq-cluster.sh stop         stop every node and remove DIR
#   deploy/rabbitmq-cluster.sh stop-node I  stop node I (1..N): the machine it runs on is lost
#   deploy/rabbitmq-cluster.sh start-node I start node I again (it rejoins the cluster)
#   deploy/rabbitmq-cluster.sh ctl I ARGS   rabbitmqctl ARGS against node I (e.g. `stop_app`)
#   deploy/rabbitmq-cluster.sh urls         the AMQP URLs, one per line
#
# Node I is `<name>-I@localhost` with AMQP on PORT+I, the management API on PORT+100+I and
# Erlang distribution on PORT+200+I, all on 127.0.0.1; user guest/guest (loopback only). The
# nodes share an Erlang cookie of their own (DIR/.erlang.cookie).
#
# Environment:
#   REFIT_RMQ_CLUSTER_DIR    where nodes keep their data and logs (default .refit-local/rabbitmq-cluster)
#   REFIT_RMQ_CLUSTER_NAME   node name stem (default refit-node); distinct per cluster on one machine
#   REFIT_RMQ_CLUSTER_PORT   base port (default 5700)
#   REFIT_RMQ_START_TIMEOUT  seconds to wait for a node (default 90)
#
# Needs rabbitmq-server installed (deploy/rabbitmq.sh installs it) and runs the nodes as the
# current user.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${REFIT_RMQ_CLUSTER_DIR:-$root/.refit-local/rabbitmq-cluster}"
name="${REFIT_RMQ_CLUSTER_NAME:-refit-node}"
base="${REFIT_RMQ_CLUSTER_PORT:-5700}"
start_timeout="${REFIT_RMQ_START_TIMEOUT:-90}"
bin=/usr/lib/rabbitmq/bin

say() { echo "rabbitmq-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ -x "$bin/rabbitmq-server" ]] || die "rabbitmq-server is not installed (run deploy/rabbitmq.sh)"
[[ "$base" =~ ^[0-9]+$ ]] && ((base > 1024 && base < 65000)) || die "bad REFIT_RMQ_CLUSTER_PORT: $base"
[[ "$name" =~ ^[a-z0-9-]+$ ]] || die "bad REFIT_RMQ_CLUSTER_NAME: $name"

node() { echo "$name-$1@localhost"; }
node_dir() { echo "$dir/node$1"; }
count() { cat "$dir/nodes" 2>/dev/null || echo 0; }

# The environment of node $1 (also what rabbitmqctl needs to reach it: the cookie in HOME).
node_env() {
  local i=$1 d
  d=$(node_dir "$i")
  echo HOME="$dir" \
    RABBITMQ_NODENAME="$(node "$i")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$((base + i)) \
    RABBITMQ_DIST_PORT=$((base + 200 + i)) \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand"
}

ctl() {
  local i=$1
  shift
  env $(node_env "$i") "$bin/rabbitmqctl" -n "$(node "$i")" "$@"
}

start_node() {
  local i=$1 d
  d=$(node_dir "$i")
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$((base + i))
management.tcp.ip = 127.0.0.1
management.tcp.port = $((base + 100 + i))
EOF
  echo '[].' >"$d/advanced.config"
  # Detached, with its own output files; `rabbitmqctl await_startup` says when it is up.
  env $(node_env "$i") setsid "$bin/rabbitmq-server" >"$d/log/stdout.log" 2>"$d/log/stderr.log" </dev/null &
  # `await_startup` fails at once while the Erlang node is not up yet: ask again until then.
  local deadline=$((SECONDS + start_timeout))
  until env $(node_env "$i") timeout 30 "$bin/rabbitmqctl" -n "$(node "$i")" -q \
    await_startup >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$d/log/stdout.log" >&2 || true
      stop_node "$i" # what did start must not linger
      die "node $(node "$i") did not start within ${start_timeout} s (logs: $d/log)"
    fi
    sleep 1
  done
}

stop_node() {
  local i=$1
  ctl "$i" -q stop >/dev/null 2>&1 || true
  # The Erlang VM may linger a moment after `stop` answers.
  local pid_file
  pid_file="$(node_dir "$i")/pid"
  if [[ -f "$pid_file" ]]; then
    local pid
    pid=$(cat "$pid_file")
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

urls() {
  local n i
  n=$(count)
  for ((i = 1; i <= n; i++)); do
    echo "amqp://guest:guest@127.0.0.1:$((base + i))/%2f"
  done
}

cmd="${1:-}"
case "$cmd" in
start)
  n="${2:-3}"
  [[ "$n" =~ ^[1-9]$ ]] || die "N must be 1..9"
  [[ "$(count)" == 0 ]] || die "a cluster runs in $dir already (stop it first)"
  mkdir -p "$dir"
  umask 077
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/.erlang.cookie"
  chmod 400 "$dir/.erlang.cookie"
  umask 022
  : >"$dir/rabbitmq-env.conf"
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  echo "$n" >"$dir/nodes"
  for ((i = 1; i <= n; i++)); do
    say "starting $(node "$i") (AMQP 127.0.0.1:$((base + i)))"
    start_node "$i"
    if ((i > 1)); then
      ctl "$i" -q stop_app >/dev/null
      ctl "$i" -q join_cluster "$(node 1)" >/dev/null
      ctl "$i" -q start_app >/dev/null
    fi
  done
  say "a cluster of $n node(s) is up"
  urls
  ;;
stop)
  n=$(count)
  for ((i = n; i >= 1; i--)); do
    stop_node "$i"
  done
  rm -rf "$dir"
  ;;
stop-node)
  [[ "${2:-}" =~ ^[1-9]$ ]] && (($2 <= $(count))) || die "no node ${2:-}"
  stop_node "$2"
  ;;
start-node)
  [[ "${2:-}" =~ ^[1-9]$ ]] && (($2 <= $(count))) || die "no node ${2:-}"
  start_node "$2"
  ;;
ctl)
  [[ "${2:-}" =~ ^[1-9]$ ]] && (($2 <= $(count))) || die "no node ${2:-}"
  i=$2
  shift 2
  ctl "$i" "$@"
  ;;
urls)
  urls
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
