#!/usr/bin/env bash
# A lab controller: ipvslb from the synced project directory into /opt/ipvslb/venv, its config
# generated from the lab topology (python -m ipvslb.lab.gen), and the ipvslb systemd service.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"
require_env LAB_ROOT LAB_TOPOLOGY LAB_NODE LAB_ADDRESS LAB_MODE LAB_CONTROLLERS LAB_WORKERS \
    LAB_VIP LAB_FIRST_CONTROLLER

if [[ ! -x "$IPVSLB_VENV/bin/python" ]]; then
    log "creating $IPVSLB_VENV"
    python3 -m venv "$IPVSLB_VENV"
fi
log "installing ipvslb from $LAB_ROOT"
"$IPVSLB_VENV/bin/pip" install --quiet --disable-pip-version-check "$LAB_ROOT"
ln -sf "$IPVSLB_VENV/bin/ipvslb" /usr/local/bin/ipvslb

interface=$(interface_of "$LAB_ADDRESS")
[[ -n "$interface" ]] || die "no interface holds $LAB_ADDRESS (is the private network up?)"
gen=("$IPVSLB_VENV/bin/python" -m ipvslb.lab.gen render --topology "$LAB_TOPOLOGY"
    --node "$LAB_NODE" --controllers "$LAB_CONTROLLERS" --workers "$LAB_WORKERS"
    --mode "$LAB_MODE" --interface "$interface"
    --endpoints kubernetes --kubeconfig "$K0S_ADMIN_KUBECONFIG")
if [[ -n "${LAB_ROLE_OVERRIDE:-}" ]]; then
    gen+=(--role "$LAB_ROLE_OVERRIDE")
fi
rendered=$(mktemp)
"${gen[@]}" -o "$rendered"
ipvslb validate -c "$rendered"
config_changed=false
if install_if_changed "$rendered" /etc/ipvslb/config.yaml 0600; then
    config_changed=true
fi
rm -f "$rendered"

unit_changed=false
if install_if_changed "$LAB_ROOT/vagrant/ipvslb.service" /etc/systemd/system/ipvslb.service 0644
then
    unit_changed=true
    systemctl daemon-reload
fi
systemctl enable ipvslb.service >/dev/null
if [[ "$config_changed" == true || "$unit_changed" == true ]] \
    || ! systemctl is-active --quiet ipvslb.service; then
    log "(re)starting ipvslb (config /etc/ipvslb/config.yaml, VRRP on $interface)"
    systemctl restart ipvslb.service
fi
wait_for "the ipvslb service" 30 2 systemctl is-active --quiet ipvslb.service
if [[ "$LAB_NODE" == "$LAB_FIRST_CONTROLLER" ]]; then
    # The first controller is alone: it must become VRRP master and hold the VIP.
    log "waiting for the VIP $LAB_VIP on $interface"
    wait_for "the VIP $LAB_VIP on $interface (journalctl -u ipvslb)" 60 2 \
        sh -c "ip -o addr show dev '$interface' | grep -q ' $LAB_VIP/'"
fi
log "ipvslb running; see: sudo ipvslb show, ip -br addr, journalctl -u ipvslb"
