#!/usr/bin/env bash
# Installs ONNX Runtime's shared library from the `onnxruntime` wheel on PyPI into a git-ignored
# folder of the repo and prints the ORT_DYLIB_PATH to use. Idempotent: a second run takes well
# under a second.
#
#   deploy/onnxruntime.sh            # install (if needed) and print `export ORT_DYLIB_PATH=...`
#   deploy/onnxruntime.sh --path     # print only the library's path
#
# Environment:
#   REFIT_ORT_VERSION   wheel version (default 1.32.0)
#   REFIT_ORT_PACKAGE   onnxruntime (default) or onnxruntime-gpu (CUDA execution provider; its newest
#                       wheel on PyPI is 1.31.1, so set REFIT_ORT_VERSION=1.31.1 with it)
#   REFIT_ORT_DIR       where to put it (default <repo>/.ort)
#   PYTHON              the Python whose pip downloads the wheel (default python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${REFIT_ORT_VERSION:-1.32.0}"
package="${REFIT_ORT_PACKAGE:-onnxruntime}"
root="${REFIT_ORT_DIR:-$repo/.ort}"
dest="$root/$package-$version"
python="${PYTHON:-python3}"
lib="$dest/libonnxruntime.so"

say() { if [[ "${1:-}" != "--path" ]]; then echo "$2" >&2; fi; }
mode="${1:-}"

if [[ ! -e "$lib" ]]; then
  say "$mode" "onnxruntime: downloading $package==$version from PyPI"
  command -v "$python" >/dev/null || { echo "onnxruntime: $python not found; install Python 3 with pip" >&2; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$package==$version" >&2
  wheel="$(ls "$tmp"/*.whl)"
  mkdir -p "$dest.partial"
  # Only the shared libraries are needed: onnxruntime/capi/libonnxruntime*.so*
  "$python" - "$wheel" "$dest.partial" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
found = []
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with z.open(name) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            found.append(base)
if not any(f.startswith("libonnxruntime.so") for f in found):
    sys.exit(f"no libonnxruntime.so in {wheel}")
PY
  real="$(cd "$dest.partial" && ls libonnxruntime.so.* 2>/dev/null | head -n1)"
  ln -sf "$real" "$dest.partial/libonnxruntime.so"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  printf 'export ORT_DYLIB_PATH=%s\n' "$lib" > "$root/env"
  say "$mode" "onnxruntime: installed $package $version into $dest"
fi

if [[ "$mode" == "--path" ]]; then
  echo "$lib"
else
  echo "export ORT_DYLIB_PATH=$lib"
fi
