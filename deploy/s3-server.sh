#!/usr/bin/env bash
# Runs the local S3-compatible server refit's tests and local stack use: Garage, one node on
# loopback (see ../shared/S3-SERVER.md). Idempotent: a second run finds it running and returns in
# about a second.
#
#   deploy/s3-server.sh            # build Garage if missing, start it if not answering, make sure
#                                  # the layout, bucket `refit` and key `refit` exist; then print
#                                  # `export REFIT_S3_…=…` lines on stdout (progress goes to stderr)
#   deploy/s3-server.sh stop       # stop the server started from this data directory
#   deploy/s3-server.sh env        # print the export lines only (the server must have been set up)
#
#   eval "$(deploy/s3-server.sh)"  # start and export the settings into this shell
#
# Environment:
#   REFIT_GARAGE_DIR         data directory (default <repo>/.refit-local/garage): garage.toml,
#                            meta/, data/, garage.log, garage.pid, credentials.env
#   REFIT_GARAGE_S3_PORT     S3 API port (default 3900)
#   REFIT_GARAGE_RPC_PORT    RPC port (default 3901)
#   REFIT_GARAGE_ADMIN_PORT  admin API port (default 3903)
#   REFIT_GARAGE_VERSION     the version `cargo install` builds if garage is missing (default 2.5.0)
#   GARAGE                   the garage binary to use (default: `garage` on PATH, else
#                            ~/.cargo/bin/garage)
#
# Ports are written into garage.toml on every run: to change them, stop the server first.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${REFIT_GARAGE_DIR:-$repo/.refit-local/garage}"
s3_port="${REFIT_GARAGE_S3_PORT:-3900}"
rpc_port="${REFIT_GARAGE_RPC_PORT:-3901}"
admin_port="${REFIT_GARAGE_ADMIN_PORT:-3903}"
version="${REFIT_GARAGE_VERSION:-2.5.0}"
host=127.0.0.1
bucket=refit
key_name=refit
config="$dir/garage.toml"
pid_file="$dir/garage.pid"
log_file="$dir/garage.log"
credentials="$dir/credentials.env"

say() { echo "s3-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Random lowercase hex, `bytes` bytes long.
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# Whether something accepts TCP connections on the S3 port.
s3_answers() { (exec 3<>"/dev/tcp/$host/$s3_port") 2>/dev/null; }

# The pid of our running server, if any (the pid file's process, if it is still a garage).
running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q garage || return 1
  echo "$pid"
}

print_env() {
  [[ -f "$credentials" ]] || die "$credentials is missing: run deploy/s3-server.sh first"
  grep -E '^[A-Z0-9_]+=' "$credentials" | sed 's/^/export /'
  say "settings are in $credentials (set -a; . $credentials; set +a)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    say "not running (no live server for $dir)"
    if s3_answers; then say "note: something else answers on $host:$s3_port"; fi
    rm -f "$pid_file"
    return 0
  fi
  say "stopping garage (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; say "stopped"; return 0; }
    sleep 0.1
  done
  say "still running after 10 s; killing it"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

find_garage() {
  if [[ -n "${GARAGE:-}" ]]; then
    [[ -x "$GARAGE" ]] || die "GARAGE=$GARAGE is not an executable"
    echo "$GARAGE"
  elif command -v garage >/dev/null; then
    command -v garage
  elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]]; then
    echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage"
  else
    return 1
  fi
}

case "${1:-start}" in
  start) ;;
  stop) stop; exit 0 ;;
  env) print_env; exit 0 ;;
  *) die "usage: deploy/s3-server.sh [start|stop|env]" ;;
esac

# 1. The binary: built once per machine, outside the repo (so `cargo clean` does not cost a rebuild).
if ! garage="$(find_garage)"; then
  command -v cargo >/dev/null || die "garage is not installed and cargo is missing to build it"
  say "garage not found: building it with \`cargo install --locked garage --version $version\`"
  say "this takes about 17 minutes on 2 cores (once per machine; it lands in ~/.cargo/bin)"
  cargo install --locked garage --version "$version" >&2
  garage="$(find_garage)" || die "cargo install finished but garage is not on PATH or in ~/.cargo/bin"
fi
say "using $("$garage" --version 2>/dev/null | head -n1) at $garage"

# 2. Data directory and config. Secrets are generated once and kept; the config is rewritten from
#    them on every run (so a port change takes effect after a stop/start).
mkdir -p "$dir/meta" "$dir/data"
chmod 700 "$dir"
umask 077
secrets="$dir/secrets.env"
if [[ ! -f "$secrets" ]]; then
  say "generating RPC secret and admin tokens in $secrets"
  {
    echo "rpc_secret=$(random_hex 32)"
    echo "admin_token=$(random_hex 32)"
    echo "metrics_token=$(random_hex 32)"
  } >"$secrets"
fi
# shellcheck disable=SC1090
source "$secrets"
cat >"$config.new" <<TOML
# Written by deploy/s3-server.sh; edits are overwritten on its next run.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "$host:$rpc_port"
rpc_public_addr = "$host:$rpc_port"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "$host:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "$host:$admin_port"
admin_token = "$admin_token"
metrics_token = "$metrics_token"
TOML
if cmp -s "$config.new" "$config"; then rm "$config.new"; else mv "$config.new" "$config"; fi
g() { "$garage" -c "$config" "$@"; }

# 3. The server: start it unless it answers already.
if pid="$(running_pid)"; then
  say "garage is running (pid $pid)"
elif s3_answers; then
  # Not ours (no live pid file): usable only if it is a Garage with this config's RPC secret.
  g status >/dev/null 2>&1 || die "something else answers on $host:$s3_port; stop it or set REFIT_GARAGE_S3_PORT"
  say "a garage for this data directory answers on $host:$s3_port (started elsewhere)"
else
  [[ -f "$pid_file" ]] && say "the last server is gone (stale pid file); restarting"
  say "starting garage on $host:$s3_port (log: $log_file)"
  # setsid + nohup: the server outlives this script and the terminal or CI step that ran it.
  setsid nohup "$garage" -c "$config" server >>"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
fi

# 4. Wait until the node answers admin commands.
for i in $(seq 1 150); do
  if g status >/dev/null 2>&1; then break; fi
  if ! running_pid >/dev/null && ! s3_answers; then
    tail -n 20 "$log_file" >&2 || true
    die "garage exited during startup; see $log_file"
  fi
  [[ $i -eq 150 ]] && die "garage did not answer \`garage status\` within 30 s; see $log_file"
  sleep 0.2
done

# 5. Layout: give this single node a role, once.
if g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
  node_id="$(g node id -q 2>/dev/null | cut -d@ -f1)"
  current="$(g layout show 2>/dev/null | sed -n 's/^Current cluster layout version: *\([0-9]*\).*/\1/p')"
  say "assigning the layout to node ${node_id:0:16} (layout version $((${current:-0} + 1)))"
  g layout assign -z dc1 -c 1G "$node_id" >/dev/null
  g layout apply --version "$((${current:-0} + 1))" >/dev/null
fi

# 6. Bucket (retried briefly: right after a layout change the tables may not be ready).
for i in $(seq 1 50); do
  if g bucket info "$bucket" >/dev/null 2>&1; then break; fi
  if g bucket create "$bucket" >/dev/null 2>&1; then say "created bucket $bucket"; break; fi
  [[ $i -eq 50 ]] && die "could not create bucket $bucket; see $log_file"
  sleep 0.2
done

# 7. Key: generated once, kept in credentials.env, imported into Garage if it does not know it.
if [[ ! -f "$credentials" ]]; then
  say "generating the S3 key in $credentials"
  cat >"$credentials" <<ENV
# S3 settings for the local Garage, written by deploy/s3-server.sh. Use with:
#   set -a; . $credentials; set +a
REFIT_S3_ENDPOINT=http://$host:$s3_port
REFIT_S3_REGION=garage
REFIT_S3_BUCKET=$bucket
REFIT_S3_ACCESS_KEY_ID=GK$(random_hex 12)
REFIT_S3_SECRET_ACCESS_KEY=$(random_hex 32)
ENV
fi
key_id="$(sed -n 's/^REFIT_S3_ACCESS_KEY_ID=//p' "$credentials")"
key_secret="$(sed -n 's/^REFIT_S3_SECRET_ACCESS_KEY=//p' "$credentials")"
[[ "$key_id" =~ ^GK[0-9a-f]{24}$ && "$key_secret" =~ ^[0-9a-f]{64}$ ]] \
  || die "$credentials is malformed; delete it and run again"
# Keep the endpoint line in step with the port.
sed -i "s|^REFIT_S3_ENDPOINT=.*|REFIT_S3_ENDPOINT=http://$host:$s3_port|" "$credentials"
if ! g key info "$key_id" >/dev/null 2>&1; then
  say "importing key $key_id (name $key_name)"
  g key import -n "$key_name" --yes "$key_id" "$key_secret" >/dev/null
fi
g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null

say "ready: S3 API on http://$host:$s3_port, region garage, bucket $bucket"
print_env
