#!/bin/sh
# nanolaunch-curl-wrapper (installed as /usr/local/bin/curl by tests/slurm_cluster/up.sh; down.sh removes it)
#
# Every SkyPilot cluster runs `curl -LsSf https://astral.sh/uv/install.sh | UV_INSTALL_DIR=... sh`
# (sky/skylet/constants.py, SKY_UV_INSTALL_CMD) with HOME set to ~/.sky_clusters/<cluster>.
# Offline, this wrapper answers that one URL with a script that links the local uv into the
# directory the real installer would use, and hands every other call to the real curl unchanged.
UV_BIN=/usr/local/bin/uv
REAL_CURL=/usr/bin/curl
UV_INSTALLER_URL=https://astral.sh/uv/install.sh

serve=0
out=""
prev=""
for arg in "$@"; do
  case "$arg" in
    "$UV_INSTALLER_URL") serve=1 ;;
  esac
  case "$prev" in
    -o | --output) out="$arg" ;;
  esac
  prev="$arg"
done
[ "$serve" = 1 ] || exec "$REAL_CURL" "$@"

script() {
  cat <<EOF
#!/bin/sh
# Stand-in for $UV_INSTALLER_URL, served by nanolaunch's curl wrapper: links the local uv.
set -eu
dir="\${UV_INSTALL_DIR:-\${XDG_BIN_HOME:-\$HOME/.local/bin}}"
mkdir -p "\$dir"
ln -sf "$UV_BIN" "\$dir/uv"
echo "uv (local copy, $UV_BIN) installed to \$dir" >&2
EOF
}
if [ -n "$out" ]; then script >"$out"; else script; fi
