#!/usr/bin/env bash
# A lab worker: joins k0s through the VIP (its token's server is the VIP, k0s's externalAddress).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"
require_env LAB_NODE LAB_ADDRESS LAB_K0S_VERSION LAB_VIP LAB_API_PORT

install_k0s "$LAB_K0S_VERSION"

if ! systemctl cat k0sworker.service >/dev/null 2>&1; then
    fetch_shared worker.token /etc/k0s/worker.token
    log "installing the k0s worker (joining through the VIP $LAB_VIP:$LAB_API_PORT)"
    # The kubelet would pick the NAT interface's address, which every VM shares.
    "$K0S_BIN" install worker --token-file /etc/k0s/worker.token \
        "--kubelet-extra-args=--node-ip=$LAB_ADDRESS"
fi
systemctl enable --now k0sworker.service >/dev/null
# An admin kubeconfig whose server is the VIP, for the walkthrough's `kubectl get nodes`.
fetch_shared admin-vip.conf /etc/ipvslb-lab/admin-vip.conf
wait_for "the kubelet" 60 5 systemctl is-active --quiet k0sworker.service
log "k0s worker up; try: sudo k0s kubectl --kubeconfig /etc/ipvslb-lab/admin-vip.conf get nodes"
