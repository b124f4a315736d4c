#!/usr/bin/env bash
# Makes sure Debian's `chromium` package is installed: tools/dashboard_check.py drives it headless
# (through Playwright, whose own browser download is never used). Prints the browser's path.
# Idempotent: when /usr/bin/chromium is there, this returns at once without touching apt.
#
#   deploy/chromium.sh               # install (if needed), print /usr/bin/chromium on stdout
#
# Installs with apt-get as root (or with passwordless sudo): `chromium` and `fonts-dejavu-core`
# (the package only recommends a font; without one, screenshots show boxes), no other recommends.
set -euo pipefail

chromium=/usr/bin/chromium

say() { echo "chromium: $*" >&2; }
die() { say "error: $*"; exit 1; }

# as_root: root, or sudo without a password prompt.
. "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

version() {
  # Debian's launcher script prints noise on stderr on some machines; keep the version line.
  "$chromium" --version 2>/dev/null | head -n 1 || true
}

if [[ -x "$chromium" ]]; then
  say "already installed: $(version)"
  echo "$chromium"
  exit 0
fi

command -v apt-get >/dev/null ||
  die "$chromium is missing and apt-get is not here: install Chromium by hand (tools/dashboard_check.py --chromium PATH)"
say "installing chromium with apt-get"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  chromium fonts-dejavu-core >&2
[[ -x "$chromium" ]] || die "apt-get installed chromium but $chromium is still missing"

# Fail here, not in the dashboard check, when the browser cannot start headless.
if ! timeout 60 "$chromium" --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
  die "$chromium was installed but does not start headless; try: $chromium --headless=new --no-sandbox --disable-gpu --dump-dom about:blank"
fi
say "ready: $(version)"
echo "$chromium"
