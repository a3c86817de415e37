#!/usr/bin/env bash
# Bring a fresh Debian 12 machine (as root) up to what `make test` and `make demo` need.
# Idempotent: every step checks before it acts, and creates only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-bpfcc clang libbpf-dev libbpf1 linux-headers-amd64 bpftool
  iproute2 iptables python3-venv python3-dev gcc make
  netsniff-ng redis-server redis-tools dnsutils curl wget busybox procps
  etcd-server etcd-client dnsmasq-base dnsperf prometheus
)

log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (BPF, namespaces, apt)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc looks for headers at /lib/modules/$(uname -r)/{build,source}. A newer running kernel than
# Debian's headers package has neither; point them at the newest installed Debian headers.
kver="$(uname -r)"
moddir="/lib/modules/$kver"
if [ ! -e "$moddir/build/include/linux/kconfig.h" ] && [ ! -e "$moddir/source/include/linux/kconfig.h" ]; then
  build_dir="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)"
  common_dir="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)"
  if [ -z "$build_dir" ] || [ -z "$common_dir" ]; then
    echo "setup: no Debian kernel headers under /usr/src (linux-headers-amd64)" >&2
    exit 1
  fi
  mkdir -p "$moddir"
  [ -e "$moddir/build" ] || { ln -s "$build_dir" "$moddir/build"; log "linked $moddir/build -> $build_dir"; }
  [ -e "$moddir/source" ] || { ln -s "$common_dir" "$moddir/source"; log "linked $moddir/source -> $common_dir"; }
fi

if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# Debian's python (not whatever python3 is first on PATH) so that bcc's dist-packages are visible.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  log "creating .venv from /usr/bin/python3 with system site packages"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.svcxdp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || [ -n "$(find csrc -newer "$stamp" \( -name '*.[ch]' -o -name '*.py' \) 2>/dev/null | head -n1)" ]; then
  log "pip install -e .[test]"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
log "ready: $(.venv/bin/python -c 'import bcc, sys; print("bcc", bcc.__version__ if hasattr(bcc, "__version__") else "ok", "python", sys.version.split()[0])')"
