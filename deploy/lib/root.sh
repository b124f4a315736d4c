# Sourced by deploy/*.sh that install packages: `as_root CMD…` runs CMD as root, directly when
# this is root, else through sudo without a password prompt; otherwise it calls the sourcing
# script's `die` with the command it could not run.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}
