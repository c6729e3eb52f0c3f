#!/usr/bin/env bash
# Exit 0 only if SkyPilot's internet probes are disabled where they would run:
#  1. a fresh interpreter of the venv has the network-probe patch active (nanolaunch_offline.py);
#  2. the running API server is that venv's python and applied the patch when it imported
#     sky.backends.backend_utils (recorded in $NL_SLURM_STATE/offline-patches.log by up.sh's server).
# Run it before launching managed jobs (their controller probes 8.8.8.8 / 1.1.1.1 otherwise).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NANOLAUNCH_OFFLINE_LOG='' "$PY" -m nanolaunch_offline || die "patch not active in $PY"
pid="$(api_server_pid)" || die "no API server running on port $NL_API_PORT"
[[ "$(readlink -f "/proc/$pid/exe")" == "$(readlink -f "$PY")" ]] ||
  die "API server pid $pid runs $(readlink -f "/proc/$pid/exe"), not $PY"
grep -qx "$pid sky.backends.backend_utils" "$NANOLAUNCH_OFFLINE_LOG" 2>/dev/null ||
  die "API server pid $pid has not applied the patch (no line in $NANOLAUNCH_OFFLINE_LOG); restart it with up.sh"
log "API server pid $pid: network-probe patch applied"
