#!/usr/bin/env bash
# Runs refit-proto's cargo-fuzz targets (proto/fuzz/README.md).
#
#   deploy/fuzz.sh ci               every target for REFIT_FUZZ_CI_SECS seconds (default 5): .ci/run
#   deploy/fuzz.sh long SECONDS     every target for SECONDS; prints executions and crashes per target
#   deploy/fuzz.sh run TARGET [ARGS] one target, with libFuzzer ARGS (e.g. -max_total_time=60)
#
# Installs cargo-fuzz from crates.io the first time (`cargo install cargo-fuzz --locked`). Uses the
# nightly toolchain when rustup has one (REFIT_FUZZ_TOOLCHAIN=stable: never), else the stable one
# with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only flags). No sanitizer (`-s none`): the targets are safe Rust, and what they
# look for is panics (and their own assertions); that also keeps the build short.
#
# Seeds: examples/data/ (YAML and JSONL), the envelope's golden samples, proto/tests/fixtures/.
# The corpus grows under proto/fuzz/corpus/<target>/ (not committed); a crash is saved under
# proto/fuzz/artifacts/<target>/ and the script exits non-zero. Turn every crash into a
# regression test in proto/tests/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/proto/fuzz"
targets=(rasa_yaml jsonl envelope stored_files api_bodies)

say() { echo "fuzz: $*" >&2; }
die() { say "error: $*"; exit 1; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked >&2
fi
toolchain=()
# REFIT_FUZZ_TOOLCHAIN=stable forces the stable toolchain (to check that path).
if [[ "${REFIT_FUZZ_TOOLCHAIN:-}" != stable ]] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

seed() {
  local target=$1 dir="$fuzz/corpus/$1"
  mkdir -p "$dir"
  case "$target" in
  rasa_yaml) find "$root/examples/data" "$root/proto/tests/fixtures" -name '*.yml' -size -256k -exec cp -n {} "$dir/" \; ;;
  jsonl) find "$root/examples/data" "$root/proto/tests/fixtures" -name '*.jsonl' -size -256k -exec cp -n {} "$dir/" \; ;;
  envelope) cp -n "$root"/proto/tests/golden/*.msgpack "$dir/" 2>/dev/null || true ;;
  stored_files) find "$root/proto/tests/fixtures" -name '*.json' -size -256k -exec cp -n {} "$dir/" \; ;;
  api_bodies)
    printf '%s' '{"model":"financial","dataset":{"key":"datasets/sha256/aa.yml","sha256":"aa"},"mode":"auto"}' >"$dir/submit.json"
    printf '%s' '{"version":"v3"}' >"$dir/alias.json"
    ;;
  esac
}

# Runs one target for $2 seconds; prints "<target> <executions> <crashes>".
run_for() {
  local target=$1 secs=$2 log
  seed "$target"
  log=$(mktemp)
  local status=0
  (cd "$fuzz" && cargo "${toolchain[@]}" fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=4096 -max_len=65536) >"$log" 2>&1 || status=$?
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    echo "$target ${execs:-0} 1"
    rm -f "$log"
    return 1
  fi
  echo "$target ${execs:-0} 0"
  rm -f "$log"
}

cmd="${1:-}"
case "$cmd" in
ci | long)
  if [[ "$cmd" == ci ]]; then
    secs="${REFIT_FUZZ_CI_SECS:-5}"
  else
    secs="${2:?usage: deploy/fuzz.sh long SECONDS}"
  fi
  [[ "$secs" =~ ^[0-9]+$ ]] || die "SECONDS must be a number"
  say "building the targets"
  (cd "$fuzz" && cargo "${toolchain[@]}" fuzz build -s none >&2)
  failed=0
  printf '%-14s %14s %8s\n' target executions crashes
  for target in "${targets[@]}"; do
    if line=$(run_for "$target" "$secs"); then :; else failed=1; fi
    read -r t e c <<<"$line"
    printf '%-14s %14s %8s\n' "$t" "$e" "$c"
  done
  ((failed == 0)) || die "a target crashed: see proto/fuzz/artifacts/"
  ;;
run)
  target="${2:?usage: deploy/fuzz.sh run TARGET [ARGS]}"
  shift 2
  seed "$target"
  cd "$fuzz" && exec cargo "${toolchain[@]}" fuzz run -s none "$target" "corpus/$target" -- "$@"
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
