#!/usr/bin/env bash
# Makes sure `promtool` (Prometheus's checker: `promtool check metrics` for the coordinator's
# /metrics text, `promtool check rules` for rule files) is installed, from Debian's `prometheus`
# package. Prints promtool's path.
# Idempotent: when promtool is on PATH, this returns at once without touching apt.
#
#   deploy/promtool.sh               # install (if needed), print promtool's path on stdout
#
# Installs with apt-get as root (or with passwordless sudo), without the package's recommends.
# The package also ships the Prometheus server as a service (port 9090), which Debian starts where
# systemd runs; this script neither needs nor touches it.
set -euo pipefail

say() { echo "promtool: $*" >&2; }
die() { say "error: $*"; exit 1; }

# as_root: root, or sudo without a password prompt.
. "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

version() { promtool --version 2>&1 | head -n 1 || true; }

if path="$(command -v promtool)"; then
  say "already installed: $(version)"
  echo "$path"
  exit 0
fi

command -v apt-get >/dev/null ||
  die "promtool is missing and apt-get is not here: install Prometheus's promtool by hand"
say "installing prometheus (for promtool) with apt-get"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2
path="$(command -v promtool)" || die "apt-get installed prometheus but promtool is not on PATH"
say "ready: $(version)"
echo "$path"
