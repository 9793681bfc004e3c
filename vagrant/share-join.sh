#!/usr/bin/env bash
# The first controller: create the join tokens and an admin kubeconfig pointing at the VIP,
# encrypt them with the lab secret and serve them on the lab network, where the other VMs'
# provisioning fetches them (Debian's boxes sync the project one way only, host to VM).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"
require_env LAB_NODE LAB_ADDRESS LAB_VIP LAB_API_PORT LAB_SECRET

share="$LAB_STATE/share"
install -d -m 0700 "$LAB_STATE" "$share"
plain=$(mktemp -d)
trap 'rm -rf "$plain"' EXIT

wait_for_api
"$K0S_BIN" token create --role=controller --expiry=12h >"$plain/controller.token"
"$K0S_BIN" token create --role=worker --expiry=12h >"$plain/worker.token"
sed -E "s|^([[:space:]]*server:[[:space:]]*).*$|\1https://${LAB_VIP}:${LAB_API_PORT}|" \
    "$K0S_ADMIN_KUBECONFIG" >"$plain/admin-vip.conf"
install -D -m 0600 "$plain/admin-vip.conf" /etc/ipvslb-lab/admin-vip.conf
for name in controller.token worker.token admin-vip.conf; do
    encrypt_to "$plain/$name" "$share/$name.enc"
done

unit=$(mktemp)
cat >"$unit" <<UNIT
[Unit]
Description=ipvslb Vagrant lab: encrypted join tokens for the other VMs
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/python3 -m http.server $LAB_SHARE_PORT --bind $LAB_ADDRESS --directory $share
Restart=on-failure
DynamicUser=yes

[Install]
WantedBy=multi-user.target
UNIT
if install_if_changed "$unit" /etc/systemd/system/ipvslb-lab-share.service 0644; then
    systemctl daemon-reload
fi
rm -f "$unit"
chmod 0755 "$LAB_STATE" "$share"
chmod 0644 "$share"/*.enc
systemctl enable ipvslb-lab-share.service >/dev/null
systemctl restart ipvslb-lab-share.service
wait_for "the join share on $LAB_ADDRESS:$LAB_SHARE_PORT" 30 1 \
    curl -fsS --max-time 2 -o /dev/null "http://$LAB_ADDRESS:$LAB_SHARE_PORT/worker.token.enc"
log "join tokens served (encrypted) on http://$LAB_ADDRESS:$LAB_SHARE_PORT/"
