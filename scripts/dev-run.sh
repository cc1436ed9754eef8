#!/usr/bin/env bash
# `make run`: one node on the in-memory broker, in dev mode, with secrets kept in .run/dev.env.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
if [ ! -f .run/dev.env ]; then
  secret=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
  key=$(.venv/bin/python -c 'import secrets; print("dev-" + secrets.token_urlsafe(16))')
  printf 'PUSHSVC_TOKEN_SECRET=%s\nPUSHSVC_API_KEYS=%s\n' "$secret" "$key" > .run/dev.env
  chmod 600 .run/dev.env
fi
set -a; . .run/dev.env; set +a
port=${PUSHSVC_PORT:-8080}
internal=${PUSHSVC_INTERNAL_PORT:-8081}
key=${PUSHSVC_API_KEYS%%,*}
cat <<EOT

  pushsvc dev node (in-memory broker) — secrets in .run/dev.env

  Demo page (patient p1):   http://127.0.0.1:${port}/demo/?user=p1
  Internal API docs:        http://127.0.0.1:${internal}/docs
  API key:                  ${key}

  Publish to patient p1:
    curl -s http://127.0.0.1:${internal}/v1/messages \\
      -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\
      -d '{"to":{"users":["p1"]},"event":"queue.called","data":{"clinic":"205","room":"205","position":1}}'

  Watch p1 with the Python client:
    set -a; . .run/dev.env; set +a
    .venv/bin/pushsvc listen --url ws://127.0.0.1:${port}/ws --user p1

EOT
exec .venv/bin/pushsvc serve --dev --port "$port" --internal-port "$internal"
