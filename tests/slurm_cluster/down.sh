#!/usr/bin/env bash
# Stops everything tests/slurm_cluster/up.sh started and leaves nothing running: the SkyPilot API server
# (and the managed-jobs controllers inside it), every Slurm job (each SkyPilot cluster is one),
# SkyPilot's SSH ControlMaster connections, then slurmd, slurmctld, sshd and munged by their PID
# files, and the curl wrapper. Idempotent: with nothing up it only reports so.
# Packages, uv, python3.10, /etc/uv/uv.toml, the offline patch and the config files stay, so the
# next up.sh is quick. Settings: see lib.sh (NL_VENV, NL_SLURM_STATE, ...).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DAEMONS=(slurmd:/usr/sbin/slurmd slurmctld:/usr/sbin/slurmctld sshd:/usr/sbin/sshd munged:/usr/sbin/munged)
LEFT=()
STOPPED=()

# descendants PID: PIDs of PID's children, grandchildren, ...
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      n = 1; todo[1] = root
      for (i = 1; i <= n; i++)
        for (p in parent)
          if (parent[p] == todo[i]) { todo[++n] = p; print p }
    }'
}

# stop PID...: SIGTERM, up to 10 s to exit, then SIGKILL; remembers them for verify.
stop() {
  local pid
  kill "$@" 2>/dev/null || true
  for pid in "$@"; do
    wait_for 50 0.2 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  done
  STOPPED+=("$@")
}

api_down() {
  local pid="" left=()
  pid="$(api_server_pid || true)"
  if [[ -n "$pid" && -x "$SKY" ]]; then timeout 120 "$SKY" api stop >>"$STAGE_LOG" 2>&1 || true; fi
  # Whatever `sky api stop` left (or all of it, if it failed or the server was gone already):
  # workers, managed-jobs controllers, subprocess_daemon.py watchers. Stopped by PID.
  mapfile -t left < <(sky_server_pids)
  ((${#left[@]} == 0)) || stop "${left[@]}"
  rm -f "$PIDS/api.pid" "$NL_SLURM_STATE/api.stamp"
  if [[ -n "$pid" ]]; then
    STAGE_NOTE="stopped pid $pid; ${#left[@]} leftover SkyPilot process(es) stopped by signal"
  else
    STAGE_NOTE="not running; ${#left[@]} leftover SkyPilot process(es) stopped by signal"
  fi
}

slurm_jobs_down() {
  local n
  if ! pid_alive slurmctld /usr/sbin/slurmctld; then STAGE_NOTE="slurmctld not running"; return; fi
  n="$(squeue -h -u root 2>/dev/null | wc -l)"
  if ((n > 0)); then
    scancel --user root >>"$STAGE_LOG" 2>&1 || true
    # shellcheck disable=SC2016  # expanded by sh -c, at each poll
    wait_for 100 0.3 sh -c '[ -z "$(squeue -h -u root)" ]' || LEFT+=("slurm jobs: $(squeue -h -u root | wc -l)")
  fi
  STAGE_NOTE="cancelled $n job(s)"
}

# SkyPilot keeps SSH master connections under /tmp/sky_ssh_<user hash>/<name>/<%C>.
ssh_mux_down() {
  local sock n=0
  for sock in /tmp/sky_ssh_*/*/*; do
    [[ -S "$sock" ]] || continue
    ssh -O exit -o ControlPath="$sock" nl-mux >>"$STAGE_LOG" 2>&1 || true
    rm -f "$sock"
    n=$((n + 1))
  done
  STAGE_NOTE="closed $n ControlMaster socket(s)"
}

daemons_down() {
  local entry name exe pid kids stopped=()
  for entry in "${DAEMONS[@]}"; do
    name="${entry%%:*}"
    exe="${entry#*:}"
    if pid_alive "$name" "$exe"; then
      pid="$(cat "$PIDS/$name.pid")"
      # e.g. sshd's per-connection children, slurmd's slurmstepd: they outlive the parent.
      mapfile -t kids < <(descendants "$pid")
      stop "$pid"
      ((${#kids[@]} == 0)) || stop "${kids[@]}"
      stopped+=("$name")
    fi
    rm -f "$PIDS/$name.pid"
  done
  STAGE_NOTE="stopped ${stopped[*]:-nothing (none running)}"
}

# Processes of Slurm jobs that outlived their job (proctrack/linuxproc tracks by parentage, so a
# process that daemonized can escape): found by SLURM_JOB_ID in their environment, killed by PID.
strays_down() {
  local d pid pids=()
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$pid" != "$$" ]] || continue
    if [[ "$(readlink -f "$d/exe" 2>/dev/null)" == /usr/sbin/slurmstepd ]] ||
      grep -qsz '^SLURM_JOB_ID=' "$d/environ"; then
      pids+=("$pid")
    fi
  done
  ((${#pids[@]} == 0)) || stop "${pids[@]}"
  STAGE_NOTE="killed ${#pids[@]} stray job process(es)${pids[*]:+: ${pids[*]}}"
}

wrapper_down() {
  if grep -q nanolaunch-curl-wrapper "$NL_CURL_WRAPPER" 2>/dev/null; then
    rm -f "$NL_CURL_WRAPPER"
    STAGE_NOTE="removed $NL_CURL_WRAPPER"
  else
    STAGE_NOTE="none installed"
  fi
}

verify_down() {
  local pid
  for pid in $(sky_server_pids); do LEFT+=("SkyPilot pid $pid"); done
  for pid in "${STOPPED[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then LEFT+=("pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"); fi
  done
  if ((${#LEFT[@]} > 0)); then
    STAGE_NOTE="still running: ${LEFT[*]}"
  else
    STAGE_NOTE="nothing left running"
  fi
}

mkdir -p "$PIDS" "$LOGS"
T0="$(now_ms)"
stage api-server api_down
stage slurm-jobs slurm_jobs_down
stage ssh-mux ssh_mux_down
stage daemons daemons_down
stage strays strays_down
stage curl-wrapper wrapper_down
stage verify verify_down
log "down in $((($(now_ms) - T0) / 1000)) s"
((${#LEFT[@]} == 0)) || exit 1
