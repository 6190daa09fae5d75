#!/bin/bash
# Installs the Debian 12 packages that building and testing smalloc need, if
# any is missing. Safe to run again: it does nothing when all are present.
set -euo pipefail
packages=(
  build-essential cmake pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  libspdlog-dev libcpp-httplib-dev nlohmann-json3-dev
  valgrind python3 python3-jsonschema curl
  libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 libsimdjson-dev gnuplot-nox
  chromium chromium-driver
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "deps.sh: installing ${missing[*]}" >&2
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
