#!/usr/bin/env bash
# A lab controller: k0s (its CPLB disabled), started alone on the first controller and joined
# through the VIP on the others (with the token the first controller serves, see share-join.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"
require_env LAB_ROOT LAB_NODE LAB_ADDRESS LAB_ROLE LAB_VIP LAB_API_PORT LAB_K0S_VERSION \
    LAB_FIRST_CONTROLLER

install_k0s "$LAB_K0S_VERSION"

rendered=$(mktemp)
render_k0s_config "$LAB_ROOT/vagrant/k0s.yaml.tmpl" "$LAB_ADDRESS" "$LAB_VIP" "$LAB_API_PORT" \
    >"$rendered"
"$K0S_BIN" config validate --config "$rendered" || die "k0s refuses the rendered $K0S_CONFIG"
config_changed=false
if install_if_changed "$rendered" "$K0S_CONFIG" 0600; then
    config_changed=true
fi
rm -f "$rendered"

if systemctl cat k0scontroller.service >/dev/null 2>&1; then
    if [[ "$config_changed" == true ]]; then
        log "k0s configuration changed: restarting k0scontroller"
        systemctl restart k0scontroller.service
    fi
else
    # endpoint-reconciler: let the apiservers list themselves in the `kubernetes` Endpoints
    #   (k0s's reconciler would list the VIP instead: ipvslb would balance to itself).
    # konnectivity-server: its agents would all reach the VIP holder only (ipvslb balances the
    #   API port); the apiservers reach the kubelets directly on the lab network instead.
    # metrics-server: an aggregated API the apiservers could not reach without konnectivity.
    disabled=endpoint-reconciler,konnectivity-server,metrics-server
    flags=(--config "$K0S_CONFIG" "--disable-components=$disabled")
    if [[ "$LAB_ROLE" == controller+worker ]]; then
        flags+=(--enable-worker --no-taints "--kubelet-extra-args=--node-ip=$LAB_ADDRESS")
    fi
    if [[ "$LAB_NODE" != "$LAB_FIRST_CONTROLLER" ]]; then
        fetch_shared controller.token /etc/k0s/controller.token
        flags+=(--token-file /etc/k0s/controller.token)
    fi
    log "installing the k0s controller ($LAB_ROLE)"
    "$K0S_BIN" install controller "${flags[@]}"
fi
systemctl enable --now k0scontroller.service >/dev/null
wait_for_api
log "k0s controller up: $("$K0S_BIN" version)"
