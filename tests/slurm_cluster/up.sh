#!/usr/bin/env bash
# Brings up, from nothing, a one-node Slurm cluster on localhost that SkyPilot reaches over SSH,
# and a SkyPilot API server on 127.0.0.1 (managed jobs in consolidation mode); ends with
# `sky check slurm` passing. Idempotent: a second run only checks what is already up.
# Debian 12, root, no systemd needed. Settings: see lib.sh. Stop everything with down.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "run as root (installs packages, starts slurmctld/slurmd/sshd/munged)"

APT_PACKAGES=(slurm-wlm munge openssh-server rsync)
SKY_REQ='skypilot[slurm]>=0.14.1,<0.15'
# PATH of a non-interactive SSH session (Debian's sshd default for root): what a cluster sees.
SSH_SESSION_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- stages --------------------------------------------------------------------------------------

packages() {
  local missing=() p policy_rc=""
  for p in "${APT_PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then STAGE_NOTE="already installed"; return; fi
  # No init system here: keep the packages' scripts from starting daemons we would not track.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# %s (temporary)\nexit 101\n' "$NL_MARK" >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_rc=1
  fi
  quiet apt-get update
  DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends "${missing[@]}"
  [[ -z "$policy_rc" ]] || rm -f /usr/sbin/policy-rc.d
  STAGE_NOTE="installed ${missing[*]}"
}

python_env() {
  if [[ ! -x "$PY" ]]; then quiet python3 -m venv "$NL_VENV"; fi
  # Installed already? (skypilot in range, its slurm extra's requirements, and uv)
  if "$PY" - "$SKY_REQ" >>"$STAGE_LOG" 2>&1 <<'EOF'; then
import sys
from importlib import metadata
from packaging.requirements import Requirement
req = Requirement(sys.argv[1])
ok = req.specifier.contains(metadata.version('skypilot'), prereleases=True)
for spec in metadata.requires('skypilot') or []:
    r = Requirement(spec)
    if r.marker is not None and r.marker.evaluate({'extra': 'slurm'}):
        try:
            ok = ok and r.specifier.contains(metadata.version(r.name), prereleases=True)
        except metadata.PackageNotFoundError:
            ok = False
metadata.version('uv')
sys.exit(0 if ok else 1)
EOF
    STAGE_NOTE="skypilot $("$PY" -c 'import importlib.metadata as m; print(m.version("skypilot"))') and uv already installed"
    return
  fi
  quiet "$PY" -m pip install --disable-pip-version-check "$SKY_REQ" uv
  STAGE_NOTE="pip installed $SKY_REQ uv"
}

# The import hook that turns SkyPilot's internet probes into no-ops; see nanolaunch_offline.py.
offline_patch() {
  local site
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  install -m 644 "$NL_HERE/nanolaunch_offline.py" "$site/nanolaunch_offline.py"
  install -m 644 "$NL_HERE/nanolaunch_offline.pth" "$site/nanolaunch_offline.pth"
  # Verify in a fresh interpreter of the venv, as the API server will be started.
  NANOLAUNCH_OFFLINE_LOG='' quiet "$PY" -m nanolaunch_offline ||
    die "network-probe patch not active in $PY (is NL_SKY_ONLINE=1 set?)"
  STAGE_NOTE="active in $site"
}

# uv, the curl wrapper that serves uv's installer, uv's certificates, and a python3.10 for uv.
uv_setup() {
  local notes=() py310
  if [[ ! -x /usr/local/bin/uv ]]; then
    install -m 755 "$NL_VENV/bin/uv" /usr/local/bin/uv
    notes+=("uv copied to /usr/local/bin")
  fi
  if [[ -e "$NL_CURL_WRAPPER" ]] && ! grep -q nanolaunch-curl-wrapper "$NL_CURL_WRAPPER" 2>/dev/null; then
    die "$NL_CURL_WRAPPER exists and is not nanolaunch's curl wrapper; move it away first"
  fi
  if ! cmp -s "$NL_HERE/curl-wrapper.sh" "$NL_CURL_WRAPPER"; then
    install -m 755 "$NL_HERE/curl-wrapper.sh" "$NL_CURL_WRAPPER"
    notes+=("curl wrapper installed")
  fi
  # uv ignores pip's settings and SSH sessions have no SSL_CERT_FILE: use the system's CAs.
  # Never let uv download a Python (from GitHub): it must use the python3.10 below.
  mkdir -p /etc/uv
  if ! grep -q "$NL_MARK" /etc/uv/uv.toml 2>/dev/null; then
    [[ ! -e /etc/uv/uv.toml ]] || cp /etc/uv/uv.toml /etc/uv/uv.toml.before-nanolaunch
    printf '# %s\nsystem-certs = true\npython-downloads = "never"\n' "$NL_MARK" >/etc/uv/uv.toml
    notes+=("/etc/uv/uv.toml written")
  fi
  # The node runtime is `uv venv --python 3.10`: make a 3.10 visible on the SSH session's PATH.
  if ! uv_finds_310 >/dev/null; then
    py310="$(printf '%s\n' /root/.pyenv/versions/3.10.*/bin/python3.10 | sort -V | tail -n 1)"
    [[ -x "$py310" ]] || py310=""
    [[ -n "$py310" ]] || py310="$(command -v python3.10 || true)"
    [[ -n "$py310" && "$py310" != /usr/local/bin/python3.10 ]] ||
      die "no python3.10 found (SkyPilot's node runtime needs one; install one, e.g. pyenv install 3.10)"
    py310="$(readlink -f "$py310")"
    ln -sf "$py310" /usr/local/bin/python3.10
    notes+=("python3.10 -> $py310")
    uv_finds_310 >/dev/null || die "uv does not find /usr/local/bin/python3.10; see $STAGE_LOG"
  fi
  notes+=("uv finds $(uv_finds_310)")
  STAGE_NOTE="$(join_notes "${notes[@]}")"
}

# `uv python find 3.10` as a cluster's SSH session runs it (its PATH, its own empty HOME as cwd).
uv_finds_310() {
  local home="$NL_SLURM_STATE/uv-probe-home"
  mkdir -p "$home"
  (cd "$home" && env -i HOME="$home" PATH="$SSH_SESSION_PATH" /usr/local/bin/uv python find 3.10 2>>"$STAGE_LOG")
}

munge_up() {
  if pid_alive munged /usr/sbin/munged; then STAGE_NOTE="already running (pid $(cat "$PIDS/munged.pid"))"; return; fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    die "a munged not started by up.sh is running; stop it first"
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    quiet mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
    </dev/null >>"$LOGS/munged.log" 2>&1 &
  echo "$!" >"$PIDS/munged.pid"
  wait_for 50 0.2 sh -c 'munge -n | unmunge' || die "munged did not come up; see $LOGS/munged.log"
  STAGE_NOTE="munged pid $(cat "$PIDS/munged.pid")"
}

slurm_conf() {
  local host
  host="$(hostname -s)"
  cat <<EOF
# $NL_MARK: a one-node cluster on localhost.
ClusterName=$NL_SLURM_CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$NL_SLURM_STATE/run/slurmctld.pid
SlurmdPidFile=$NL_SLURM_STATE/run/slurmd.pid
# Lets the node claim more CPUs/memory than it has, so several SkyPilot clusters fit at once.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
# Without a MaxTime SkyPilot submits with no time limit.
PartitionName=debug Nodes=$host Default=YES MaxTime=02:00:00 State=UP
EOF
}

node_idle() { [[ "$(sinfo -h -N -o '%T' 2>/dev/null)" =~ ^(idle|mixed|allocated)$ ]]; }

slurm_up() {
  local conf=/etc/slurm/slurm.conf new restart=""
  new="$(slurm_conf)"
  if [[ -e "$conf" ]] && ! grep -q "$NL_MARK" "$conf"; then
    [[ "${NL_SLURM_FORCE:-}" == 1 ]] || die "$conf was not written by up.sh; set NL_SLURM_FORCE=1 to replace it (a backup is kept)"
    cp "$conf" "$conf.before-nanolaunch"
  fi
  if [[ "$(cat "$conf" 2>/dev/null)" != "$new" ]]; then
    mkdir -p /etc/slurm
    printf '%s\n' "$new" >"$conf"
    restart=1
  fi
  install -d -m 755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$NL_SLURM_STATE/run"
  if [[ -z "$restart" ]] && pid_alive slurmctld /usr/sbin/slurmctld && pid_alive slurmd /usr/sbin/slurmd; then
    wait_for 60 0.5 node_idle || die "slurm node not idle; see sinfo and $LOGS/slurm*.log"
    STAGE_NOTE="already running; node $(sinfo -h -N -o '%N %T' | head -n 1)"
    return
  fi
  stop_pid slurmd /usr/sbin/slurmd
  stop_pid slurmctld /usr/sbin/slurmctld
  setsid /usr/sbin/slurmctld -D </dev/null >>"$LOGS/slurmctld.log" 2>&1 &
  echo "$!" >"$PIDS/slurmctld.pid"
  wait_for 60 0.5 scontrol ping || die "slurmctld did not answer; see $LOGS/slurmctld.log"
  setsid /usr/sbin/slurmd -D </dev/null >>"$LOGS/slurmd.log" 2>&1 &
  echo "$!" >"$PIDS/slurmd.pid"
  wait_for 120 0.5 node_idle || die "slurm node not idle; see sinfo and $LOGS/slurmd.log"
  STAGE_NOTE="slurmctld pid $(cat "$PIDS/slurmctld.pid"), slurmd pid $(cat "$PIDS/slurmd.pid"); node $(sinfo -h -N -o '%N %T' | head -n 1)"
}

# stop_pid NAME EXE: SIGTERM the recorded daemon (if it is still EXE), SIGKILL after 10 s.
stop_pid() {
  local pid
  pid_alive "$1" "$2" || { rm -f "$PIDS/$1.pid"; return 0; }
  pid="$(cat "$PIDS/$1.pid")"
  kill "$pid" 2>/dev/null || true
  wait_for 50 0.2 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDS/$1.pid"
}

ssh_up() {
  local notes=()
  install -d -m 700 "$HOME/.ssh" "$HOME/.slurm"
  if [[ ! -f "$NL_SSH_KEY" ]]; then
    quiet ssh-keygen -q -t ed25519 -N '' -C nanolaunch-local-slurm -f "$NL_SSH_KEY"
    notes+=("key $NL_SSH_KEY")
  fi
  touch "$HOME/.ssh/authorized_keys"
  chmod 600 "$HOME/.ssh/authorized_keys"
  grep -qxF "$(cat "$NL_SSH_KEY.pub")" "$HOME/.ssh/authorized_keys" ||
    cat "$NL_SSH_KEY.pub" >>"$HOME/.ssh/authorized_keys"
  write_slurm_ssh_config
  if ! pid_alive sshd /usr/sbin/sshd; then
    quiet ssh-keygen -A
    install -d -m 755 /run/sshd
    # SetEnv: a login shell killed mid `pyenv rehash` (scancel) leaves pyenv's lock file behind, and every
    # later login shell on the node (srun inherits this session's environment) would wait 60 s for it.
    setsid /usr/sbin/sshd -D -e -o ListenAddress=127.0.0.1 -o Port="$NL_SLURM_SSH_PORT" \
      -o SetEnv=PYENV_REHASH_TIMEOUT=1 \
      -o PidFile="$NL_SLURM_STATE/run/sshd.pid" </dev/null >>"$LOGS/sshd.log" 2>&1 &
    echo "$!" >"$PIDS/sshd.pid"
    notes+=("sshd pid $! on 127.0.0.1:$NL_SLURM_SSH_PORT")
  else
    notes+=("sshd already running (pid $(cat "$PIDS/sshd.pid"))")
  fi
  wait_for 50 0.2 ssh -F "$HOME/.slurm/config" -o BatchMode=yes "$NL_SLURM_CLUSTER" sinfo -h ||
    die "cannot run sinfo over ssh -F ~/.slurm/config $NL_SLURM_CLUSTER; see $LOGS/sshd.log"
  notes+=("ssh $NL_SLURM_CLUSTER sinfo ok")
  STAGE_NOTE="$(join_notes "${notes[@]}")"
}

# ~/.slurm/config: SkyPilot's list of Slurm clusters (SSH-config format, Host = cluster name).
# Only the block between our markers is (re)written; other clusters there are kept.
write_slurm_ssh_config() {
  local cfg="$HOME/.slurm/config" begin="# >>> $NL_MARK >>>" end="# <<< $NL_MARK <<<" rest=""
  [[ ! -e "$cfg" ]] || rest="$(awk -v b="$begin" -v e="$end" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$cfg")"
  {
    printf '%s\n' "$begin"
    printf 'Host %s\n' "$NL_SLURM_CLUSTER"
    printf '  HostName 127.0.0.1\n  Port %s\n  User root\n' "$NL_SLURM_SSH_PORT"
    printf '  IdentityFile %s\n  IdentitiesOnly yes\n' "$NL_SSH_KEY"
    printf '  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n'
    printf '%s\n' "$end"
    [[ -z "$rest" ]] || printf '%s\n' "$rest"
  } >"$cfg.tmp"
  mv "$cfg.tmp" "$cfg"
  chmod 600 "$cfg"
}

# ~/.sky/config.yaml: managed-jobs controller inside the API server (it cannot run on Slurm),
# and only Slurm enabled unless the user already chose clouds (the server's on-boot
# `sky check` would otherwise probe every cloud).
sky_config() {
  STAGE_NOTE="$("$PY" - "$HOME/.sky/config.yaml" 2>>"$STAGE_LOG" <<'EOF'
import os, sys, yaml
path = sys.argv[1]
cfg = {}
if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
        cfg = yaml.safe_load(f) or {}
before = yaml.safe_dump(cfg, sort_keys=True)
cfg.setdefault('jobs', {}).setdefault('controller', {})['consolidation_mode'] = True
clouds = cfg.setdefault('allowed_clouds', ['slurm'])
if not any(str(c).lower() == 'slurm' for c in clouds):
    clouds.append('slurm')
if yaml.safe_dump(cfg, sort_keys=True) != before:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    print(f'{path} updated')
else:
    print(f'{path} already set')
EOF
)"
}

api_up() {
  local stamp pid
  # What the running server must have been started with: this config and this patch.
  stamp="$(cat "$HOME/.sky/config.yaml" "$NL_HERE/nanolaunch_offline.py" | sha256sum | cut -d' ' -f1)"
  pid="$(api_server_pid || true)"
  if [[ -n "$pid" && "$pid" == "$(cat "$PIDS/api.pid" 2>/dev/null)" &&
    "$stamp" == "$(cat "$NL_SLURM_STATE/api.stamp" 2>/dev/null)" ]] && api_healthy; then
    STAGE_NOTE="already running (pid $pid) at http://127.0.0.1:$NL_API_PORT"
    return
  fi
  if [[ -n "$pid" ]]; then quiet "$SKY" api stop; fi
  # Never start the server without the network-probe patch.
  NANOLAUNCH_OFFLINE_LOG='' quiet "$PY" -m nanolaunch_offline || die "network-probe patch not active"
  : >"$NANOLAUNCH_OFFLINE_LOG"
  quiet "$SKY" api start --host 127.0.0.1
  wait_for 60 0.5 api_healthy || die "API server not healthy; see ~/.sky/api_server/server.log"
  quiet "$SKY" api info
  pid="$(api_server_pid)" || die "API server started but its process was not found"
  echo "$pid" >"$PIDS/api.pid"
  echo "$stamp" >"$NL_SLURM_STATE/api.stamp"
  [[ "$(readlink -f "/proc/$pid/exe")" == "$(readlink -f "$PY")" ]] ||
    die "API server (pid $pid) runs $(readlink -f "/proc/$pid/exe"), not the venv's python"
  # The server imports backend_utils at start-up: the patch must have been applied in it.
  grep -qx "$pid sky.backends.backend_utils" "$NANOLAUNCH_OFFLINE_LOG" ||
    die "API server pid $pid did not apply the network-probe patch (see $NANOLAUNCH_OFFLINE_LOG)"
  STAGE_NOTE="pid $pid at http://127.0.0.1:$NL_API_PORT, network-probe patch applied"
}

sky_check() {
  quiet "$SKY" check slurm
  grep -Eiq 'slurm.*enabled|enabled.*slurm' "$STAGE_LOG" || {
    tail -n 30 "$STAGE_LOG" >&2
    die "sky check slurm did not report Slurm enabled"
  }
  grep -Eq "\\b$NL_SLURM_CLUSTER\\b" "$STAGE_LOG" ||
    die "sky check slurm does not list cluster $NL_SLURM_CLUSTER; see $STAGE_LOG"
  STAGE_NOTE="Slurm enabled; infra: slurm/$NL_SLURM_CLUSTER"
}

# --- main ----------------------------------------------------------------------------------------

mkdir -p "$PIDS" "$LOGS" "$NL_SLURM_STATE/run"
T0="$(now_ms)"
stage packages packages
stage python python_env
stage offline offline_patch
stage uv uv_setup
stage munge munge_up
stage slurm slurm_up
stage ssh ssh_up
stage sky-config sky_config
stage api-server api_up
stage sky-check sky_check
log "up in $((($(now_ms) - T0) / 1000)) s. infra: slurm/$NL_SLURM_CLUSTER; API server: http://127.0.0.1:$NL_API_PORT; state: $NL_SLURM_STATE; stop with: bash tests/slurm_cluster/down.sh"
