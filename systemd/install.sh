#!/usr/bin/env bash
# Install or upgrade edge-agent on a Debian device. Run as root from a checkout:
#
#   sudo ./systemd/install.sh
#
# Safe to run again: existing configuration files are never overwritten, the
# account is created only once, and the package in the venv is reinstalled from
# the checkout (which is how an upgrade is done).
#
# A first install leaves the service disabled: the installed configuration
# (configs/minimal.toml) only keeps local MQTT readings in the spool. Make it yours,
# check it, then enable the service (the script says how at the end). An upgrade
# restarts a service that is enabled or running.
set -euo pipefail

readonly SERVICE=edge-agent
readonly SERVICE_USER=edge-agent
readonly SERVICE_GROUP=edge-agent
readonly VENV=/opt/edge-agent
readonly CONFIG_DIR=/etc/edge-agent
readonly CONFIG_FILE=${CONFIG_DIR}/edge-agent.toml
readonly STATE_DIR=/var/lib/edge-agent
readonly MOSQUITTO_SNIPPET=/etc/mosquitto/conf.d/edge-agent.conf
readonly UNIT_DEST=/etc/systemd/system/${SERVICE}.service

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO_DIR

# Files we create must be readable by the service account (the venv) whatever
# root's umask is; secrets get explicit modes below.
umask 022

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

systemd_running() {
    # Same test as sd_booted(3), plus PID 1 really being systemd (containers may
    # bind-mount /run from a host).
    [[ -d /run/systemd/system ]] && [[ "$(cat /proc/1/comm 2>/dev/null || true)" == systemd ]]
}

package_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# --------------------------------------------------------------------------- checks
[[ ${EUID} -eq 0 ]] || die "run as root (e.g. sudo $0)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian-based systems only"
for f in pyproject.toml configs/minimal.toml samples/mosquitto.conf systemd/${SERVICE}.service; do
    [[ -f ${REPO_DIR}/${f} ]] || die "${REPO_DIR}/${f} is missing: run this script from an edge-agent checkout"
done

# --------------------------------------------------------------------------- packages
missing=()
# procps: /bin/kill, which the unit's ExecReload uses (absent from minimal images).
for pkg in python3-venv mosquitto procps; do
    package_installed "${pkg}" || missing+=("${pkg}")
done
if ((${#missing[@]} > 0)); then
    log "Installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "Debian packages python3-venv, mosquitto and procps are already installed"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "edge-agent needs Python >= 3.11, found $(python3 --version 2>&1)"

# --------------------------------------------------------------------------- account
if getent group "${SERVICE_GROUP}" >/dev/null; then
    log "Group ${SERVICE_GROUP} exists"
else
    log "Creating system group ${SERVICE_GROUP}"
    groupadd --system "${SERVICE_GROUP}"
fi
if id -u "${SERVICE_USER}" >/dev/null 2>&1; then
    log "User ${SERVICE_USER} exists"
else
    log "Creating system user ${SERVICE_USER} (home ${STATE_DIR}, no login shell)"
    useradd --system --gid "${SERVICE_GROUP}" --home-dir "${STATE_DIR}" --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-agent store-and-forward agent" "${SERVICE_USER}"
fi
getent group video >/dev/null || groupadd --system video
if [[ " $(id -nG "${SERVICE_USER}") " == *" video "* ]]; then
    log "User ${SERVICE_USER} is in group video"
else
    log "Adding ${SERVICE_USER} to group video (camera access)"
    usermod --append --groups video "${SERVICE_USER}"
fi
# systemd creates and chowns it too (StateDirectory=); created here for hosts
# where the agent is started by hand.
install -d -o "${SERVICE_USER}" -g "${SERVICE_GROUP}" -m 0750 "${STATE_DIR}"

# --------------------------------------------------------------------------- venv
if [[ -x ${VENV}/bin/python ]]; then
    log "Using existing venv ${VENV}"
else
    log "Creating venv ${VENV}"
    python3 -m venv "${VENV}"
fi
log "Installing edge-agent from ${REPO_DIR} into ${VENV}"
# Build from a clean copy so the build leaves no root-owned build/ or *.egg-info
# in the checkout.
build_dir=$(mktemp -d)
trap 'rm -rf -- "${build_dir}"' EXIT
tar -C "${REPO_DIR}" --exclude=./.git --exclude=./.venv --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' --exclude=./.benchmarks \
    -cf - . | tar -C "${build_dir}" -xf -
"${VENV}/bin/python" -m pip install --quiet --upgrade "${build_dir}"
[[ -x ${VENV}/bin/edge-agent ]] || die "${VENV}/bin/edge-agent was not installed"

# --------------------------------------------------------------------------- config
install -d -m 0755 "${CONFIG_DIR}"
if [[ -e ${CONFIG_FILE} ]]; then
    log "Keeping existing ${CONFIG_FILE}"
else
    log "Installing a minimal config ${CONFIG_FILE} (keeps local MQTT readings; sends nothing)"
    # May hold credentials: readable by the service group only.
    install -m 0640 -o root -g "${SERVICE_GROUP}" "${REPO_DIR}/configs/minimal.toml" "${CONFIG_FILE}"
    # Every key, with what it is for, to copy sections from.
    install -m 0644 "${REPO_DIR}/configs/edge-agent.toml" "${CONFIG_DIR}/edge-agent.toml.example"
fi

mosquitto_changed=no
if [[ -e ${MOSQUITTO_SNIPPET} ]]; then
    log "Keeping existing ${MOSQUITTO_SNIPPET}"
else
    log "Installing Mosquitto settings ${MOSQUITTO_SNIPPET}"
    install -D -m 0644 "${REPO_DIR}/samples/mosquitto.conf" "${MOSQUITTO_SNIPPET}"
    mosquitto_changed=yes
fi

# --------------------------------------------------------------------------- unit
# The unit is ours and always replaced; local changes belong in a drop-in
# (systemctl edit edge-agent).
if cmp -s "${REPO_DIR}/systemd/${SERVICE}.service" "${UNIT_DEST}"; then
    log "Unit ${UNIT_DEST} is up to date"
else
    log "Installing unit ${UNIT_DEST}"
    install -m 0644 "${REPO_DIR}/systemd/${SERVICE}.service" "${UNIT_DEST}"
fi

# --------------------------------------------------------------------------- start
if systemd_running; then
    systemctl daemon-reload
    if [[ ${mosquitto_changed} == yes ]]; then
        log "Restarting mosquitto to apply ${MOSQUITTO_SNIPPET}"
        systemctl enable mosquitto.service
        systemctl restart mosquitto.service ||
            warn "mosquitto failed to restart: see journalctl -u mosquitto (edge-agent keeps retrying)"
    fi
    if systemctl is-active --quiet "${SERVICE}.service" ||
        systemctl is-enabled --quiet "${SERVICE}.service"; then
        log "Restarting ${SERVICE} to run the installed version"
        "${VENV}/bin/edge-agent" check-config -c "${CONFIG_FILE}" ||
            die "${CONFIG_FILE} has errors (above): fix them, then run this script again"
        systemctl restart "${SERVICE}.service"
        log "Done. Check it with:"
        note "systemctl status ${SERVICE}"
        note "${VENV}/bin/edge-agent status -c ${CONFIG_FILE}"
    else
        log "Installed; the service is not enabled yet. Next:"
        note "1. edit ${CONFIG_FILE} (every key: ${CONFIG_DIR}/edge-agent.toml.example;"
        note "   a first run on AWS: docs/DEPLOY.md)"
        note "2. ${VENV}/bin/edge-agent check-config -c ${CONFIG_FILE}"
        note "   ${VENV}/bin/edge-agent check-config --online -c ${CONFIG_FILE}  (AWS sinks)"
        note "3. systemctl enable --now ${SERVICE}"
        note "4. ${VENV}/bin/edge-agent status -c ${CONFIG_FILE}; journalctl -u ${SERVICE} -f"
    fi
else
    pid1=$(cat /proc/1/comm 2>/dev/null || echo unknown)
    log "Files installed, but systemd is not running here (PID 1 is '${pid1}'), so nothing was started."
    note "Check ${CONFIG_FILE} with: ${VENV}/bin/edge-agent check-config -c ${CONFIG_FILE}"
    note "On a systemd host, then run:"
    note "  systemctl daemon-reload && systemctl enable --now mosquitto ${SERVICE}"
    note "Without systemd, start the broker and the agent yourself, e.g.:"
    note "  service mosquitto start"
    note "  runuser -u ${SERVICE_USER} -- ${VENV}/bin/edge-agent run -c ${CONFIG_FILE}"
    note "(no watchdog, automatic restart or sandboxing apply in that case)"
fi
