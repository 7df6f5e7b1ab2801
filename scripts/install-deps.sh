#!/usr/bin/env bash
# Installs the Debian packages headinfer builds against (Debian 12). Idempotent.
set -euo pipefail
# Extra packages may be named as arguments (scripts/fuzz.sh: clang and its libFuzzer runtime).
pkgs=(cmake g++ make nlohmann-json3-dev libcli11-dev libgtest-dev libonig-dev pkg-config libcpp-httplib-dev python3-dev
      python3-venv "$@")
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
