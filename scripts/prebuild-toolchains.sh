#!/usr/bin/env bash
# Installs the Debian cross toolchains scripts/prebuild.mjs uses (needs root; Debian 12 here):
# gcc for x86_64 (glibc), musl-tools (x86_64 musl headers, libc and gcc specs), the aarch64 cross
# gcc with its glibc, musl-dev:arm64 (aarch64 musl headers, libc and specs, via multiarch), and
# qemu-user, with which test/package.test.ts loads the arm64 builds.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
apt-get install -y -qq --no-install-recommends gcc musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-dev:arm64 qemu-user >/dev/null
