#!/usr/bin/env bash
# docs/dashboard.png: the Ray dashboard during a search. Starts a local Ray head (dashboard on
# 127.0.0.1:8265), submits a search as a Ray job, photographs the job's page with headless
# Chromium (Debian's `chromium` package) while the trials run, and stops Ray.
# Usage: scripts/dashboard_screenshot.sh [OUTPUT.png]   (run it when no other Ray runs here)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/.venv"
out="$(realpath -m "${1:-docs/dashboard.png}")"
temp="$(mktemp -d /tmp/ray-shot-XXXX)"
results="$(mktemp -d)"
# Token authentication, as on a cluster: the head and this script's clients share ~/.ray/auth_token.
export RAY_AUTH_MODE=token
"$venv/bin/ray" get-auth-token --generate > /dev/null
# --block: the head lives as long as this `ray start`, and stopping it (SIGTERM) stops only the Ray
# processes it started; a bare `ray stop` would end every Ray on this machine.
"$venv/bin/ray" start --head --block --temp-dir="$temp" --include-dashboard=true --dashboard-host=127.0.0.1 \
  --dashboard-port=8265 --metrics-export-port=8080 --disable-usage-stats > /dev/null &
head=$!
trap 'kill "$head" 2> /dev/null && wait "$head"; rm -rf "$temp" "$results"' EXIT
until curl -s -o /dev/null http://127.0.0.1:8265/; do kill -0 "$head"; sleep 1; done
"$venv/bin/ray" job submit --no-wait --submission-id mmray-search --address http://127.0.0.1:8265 -- \
  "$venv/bin/python" -m mmray.tune --space gmm.yaml --num-samples 4 --epochs 4 --storage "$results" --address auto

# Wait until trials report, then let the dashboard's pages catch up.
until curl -s http://127.0.0.1:8080/metrics | grep -q '^ray_mmray_val_fused_acc'; do sleep 2; done
sleep 20
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1500 \
  --virtual-time-budget=15000 --screenshot="$out" "http://127.0.0.1:8265/#/jobs/mmray-search" 2> /dev/null
"$venv/bin/ray" job stop --address http://127.0.0.1:8265 mmray-search > /dev/null || true
echo "wrote $out"
