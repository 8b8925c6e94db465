#!/usr/bin/env bash
# Runs inside `unshare --net --pid --fork --mount-proc`: only loopback exists, and every process
# started here (Ray's daemons included) dies with this shell, the namespace's init.
# Starts a Ray head (node-a) and NODES-1 more nodes (node-b, ...) on 127.0.0.1, node i offering
# one CPU device as the custom resource symoe_dev_i, then runs the driver command given as
# arguments. Environment: RAY_BIN (the venv's bin folder), RAY_PORT, RAY_TMP, NODES.
set -euo pipefail
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1
names=(node-a node-b node-c node-d)
common=(--node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 0 --disable-usage-stats)
"$RAY_BIN/ray" start --head --port "$RAY_PORT" --node-name node-a --resources '{"symoe_dev_0": 1}' \
  --include-dashboard=false --temp-dir "$RAY_TMP" "${common[@]}" >"$RAY_TMP/node-a.log" 2>&1
for ((i = 1; i < ${NODES:-2}; i++)); do
  "$RAY_BIN/ray" start --address "127.0.0.1:$RAY_PORT" --node-name "${names[$i]}" \
    --resources "{\"symoe_dev_$i\": 1}" "${common[@]}" >"$RAY_TMP/${names[$i]}.log" 2>&1
done
echo "cluster up" >&2
"$@"
