#!/usr/bin/env bash
# The cluster path on this machine: `ray up cluster/local.yaml`, a small search submitted to the
# cluster as a Ray job, its metrics read from the head's Prometheus endpoint, `ray down`.
#
# Needs an SSH server on 127.0.0.1:22 that accepts ~/.ssh/id_ed25519 for you, rsync, and this
# checkout's .venv (pip install -e .). Usage: scripts/ray_up_local.sh [RESULTS_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/.venv"
results="$(realpath -m "${1:-$HOME/mmray_results}")"
name="cluster-$(date +%Y%m%d-%H%M%S)"

# The cluster's commands run in a non-interactive SSH shell: they find the environment here.
ln -sfn "$venv" ~/.mmray-venv
config="$(mktemp --suffix=.yaml)"
sed "s/^  ssh_user: .*/  ssh_user: $(id -un)/" cluster/local.yaml > "$config"
# `ray down` runs a bare `ray stop` on the node, which finds no `ray` on a PATH without the venv
# (and would end every Ray here if it did): stop the processes of the head that `ray up` started,
# which alone use the temp dir cluster/local.yaml gives it.
temp=/tmp/ray-mmray-local
trap '"$venv/bin/ray" down -y "$config"; pkill -TERM -f -- "$temp/" || true; rm -f "$config"' EXIT

# Token authentication: the head starts with RAY_AUTH_MODE=token, and this script's clients use
# the same token (~/.ray/auth_token, created on first use).
export RAY_AUTH_MODE=token
"$venv/bin/ray" get-auth-token --generate > /dev/null
time "$venv/bin/ray" up -y --no-config-cache "$config"
echo "== the jobs API without the token answers HTTP $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8265/api/jobs/)"

# The search as a Ray job, through the jobs API on the head's 127.0.0.1:8265; while it runs, keep
# the latest mmray samples from the head's Prometheus endpoint (a trial's gauges leave with it).
"$venv/bin/ray" job submit --address http://127.0.0.1:8265 -- \
  "$venv/bin/python" -m mmray.tune --space joint.yaml --num-samples 2 --epochs 2 \
  --storage "$results" --name "$name" --address auto &
job=$!
samples="$(mktemp)"
while kill -0 "$job" 2> /dev/null; do
  latest="$(curl -s http://127.0.0.1:8080/metrics | grep '^ray_mmray_val_' || true)"
  [ -n "$latest" ] && echo "$latest" > "$samples"
  sleep 2
done
wait "$job"

echo "== mmray metrics seen on the head's Prometheus endpoint (http://127.0.0.1:8080/metrics):"
cat "$samples"; rm -f "$samples"
echo "== $results/$name:"
ls "$results/$name"
