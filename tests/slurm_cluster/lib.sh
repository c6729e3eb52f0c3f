# shellcheck shell=bash disable=SC2034  # variables used by up.sh/down.sh
# Shared by up.sh and down.sh (sourced, not run). Settings, all optional:
#   NL_VENV            python venv holding SkyPilot        (default: <repo>/.venv)
#   NL_SLURM_STATE     PID files and logs                  (default: /tmp/nl-slurm)
#   NL_SLURM_CLUSTER   Slurm cluster name SkyPilot sees    (default: nl-local)
#   NL_SLURM_SSH_PORT  port of the loopback-only sshd      (default: 22)
#   NL_SLURM_FORCE=1   replace an /etc/slurm/slurm.conf that up.sh did not write
set +m  # no job control: a background `setsid cmd &` then keeps cmd's PID in $!

NL_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NL_HERE="$NL_REPO/tests/slurm_cluster"
NL_VENV="${NL_VENV:-$NL_REPO/.venv}"
NL_SLURM_STATE="${NL_SLURM_STATE:-/tmp/nl-slurm}"
NL_SLURM_CLUSTER="${NL_SLURM_CLUSTER:-nl-local}"
NL_SLURM_SSH_PORT="${NL_SLURM_SSH_PORT:-22}"
NL_SSH_KEY="$HOME/.ssh/nl_slurm_ed25519"
NL_MARK="managed by nanolaunch tests/slurm_cluster/up.sh"
NL_CURL_WRAPPER=/usr/local/bin/curl
NL_API_PORT="${SKYPILOT_API_SERVER_LOCAL_PORT:-46580}"
export SKYPILOT_DISABLE_USAGE_COLLECTION=1
# The offline module appends "<pid> <module>" here each time it patches a module.
export NANOLAUNCH_OFFLINE_LOG="$NL_SLURM_STATE/offline-patches.log"

PY="$NL_VENV/bin/python"
SKY="$NL_VENV/bin/sky"
PIDS="$NL_SLURM_STATE/pids"
LOGS="$NL_SLURM_STATE/logs"

log() { printf 'nl-slurm: %s\n' "$*"; }
die() { printf 'nl-slurm: ERROR: %s\n' "$*" >&2; exit 1; }

now_ms() { date +%s%3N; }
join_notes() { local IFS=';'; printf '%s' "$*" | sed 's/;/; /g'; }

# stage NAME FUNCTION: runs FUNCTION, prints one line with its duration and the
# note the function left in STAGE_NOTE. Output of commands goes to $LOGS/NAME.log.
stage() {
  local name="$1" fn="$2" t0 t1
  STAGE_NOTE=""
  STAGE_LOG="$LOGS/$name.log"
  : >"$STAGE_LOG"
  t0="$(now_ms)"
  "$fn"
  t1="$(now_ms)"
  printf 'nl-slurm: %-12s %6.1fs  %s\n' "$name" "$(((t1 - t0) / 100))e-1" "$STAGE_NOTE"
}

# quiet CMD...: runs CMD with its output in the stage log; on failure shows the log's tail.
quiet() {
  if ! "$@" >>"$STAGE_LOG" 2>&1; then
    printf 'nl-slurm: command failed: %s\n--- last lines of %s ---\n' "$*" "$STAGE_LOG" >&2
    tail -n 30 "$STAGE_LOG" >&2
    return 1
  fi
}

# wait_for TRIES DELAY CMD...: polls CMD until it succeeds, at most TRIES times.
wait_for() {
  local tries="$1" delay="$2" i
  shift 2
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep "$delay"
  done
  return 1
}

# pid_alive NAME EXE: the PID in $PIDS/NAME.pid is running EXE, symlinks resolved (guards
# against PID reuse; /usr/sbin/slurmctld is an alternatives link to slurmctld-wlm).
pid_alive() {
  local pid
  pid="$(cat "$PIDS/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$2")" ]]
}

# The API server answers its health endpoint (`sky api info` exits 0 even with no server).
api_healthy() {
  /usr/bin/curl -fsS --max-time 10 "http://127.0.0.1:$NL_API_PORT/api/health" | grep -q '"status":"healthy"'
}

# The API server's PID: the process running `python -m sky.server.server ... --port=PORT`.
api_server_pid() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd="$( { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null)" || continue
    if [[ "$cmd" == *" -m sky.server.server "* && "$cmd" == *"--port=$NL_API_PORT"* ]]; then
      echo "${d#/proc/}"
      return 0
    fi
  done
  return 1
}

# Server-side SkyPilot processes of this venv: the API server and its workers, the managed-jobs
# controllers (reparented to init) and skylet's subprocess_daemon.py watchers.
sky_server_pids() {
  local d cmd py
  py="$(readlink -f "$PY")"
  for d in /proc/[0-9]*; do
    [[ "$(readlink -f "$d/exe" 2>/dev/null)" == "$py" ]] || continue
    cmd="$( { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null)" || continue
    case "$cmd" in
      *" -m sky.server.server "* | *"-msky.jobs.controller "* | *" -m sky.jobs.controller "* | \
        *"sky/skylet/subprocess_daemon.py "* | SkyPilot:*) echo "${d#/proc/}" ;;
    esac
  done
}
