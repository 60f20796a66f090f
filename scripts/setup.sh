#!/usr/bin/env bash
# Install everything the project, its demo and its tests need on a fresh
# Debian machine (run as root), then install npm packages and build.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(fio erofs-utils squashfs-tools squashfuse fuse3 attr zstd lz4 gzip tar util-linux kmod python3 make g++ qemu-system-x86 qemu-system-common busybox-static cpio xz-utils docker-registry apache2-utils nginx openssl containerd runc umoci skopeo)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to apt-get install ${missing[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
npm ci
npm run build
