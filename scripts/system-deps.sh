#!/usr/bin/env bash
# Make sure the Debian packages the tests and `make run` need are installed.
# As root: installs what is missing with apt-get. Otherwise: prints the exact command and fails.
set -euo pipefail

want=(
  "redis-server:redis-server"
  "chromium:chromium"
  "nginx:nginx-light"
  "prometheus:prometheus"
  "promtool:prometheus"
  "prometheus-alertmanager:prometheus-alertmanager"
  "amtool:prometheus-alertmanager"
  "node:nodejs"
  "tmux:tmux"
  "openssl:openssl"
  "faketime:faketime"
  "dot:graphviz"
  "npm:npm"
)
[ "${1:-}" = "--run-only" ] && want=("python3:python3")

missing=()
for pair in "${want[@]}"; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/bin/$bin" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing Debian packages; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
