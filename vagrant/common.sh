#!/usr/bin/env bash
# Every lab VM: Debian packages, kernel modules and sysctls for k0s and ipvslb.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"
require_env LAB_NODE LAB_KIND LAB_ROLE

export DEBIAN_FRONTEND=noninteractive
packages=(ca-certificates curl openssl iproute2 iptables)
if [[ "$LAB_KIND" == controller ]]; then
    # keepalived and the tools `ipvslb up` and `ipvslb show` use; a venv for ipvslb itself.
    packages+=(keepalived ipvsadm python3 python3-venv)
fi
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get -qq update
    apt-get -qq install -y --no-install-recommends "${missing[@]}"
fi
if [[ "$LAB_KIND" == controller ]]; then
    # ipvslb runs keepalived itself: the Debian service must never start a second one.
    systemctl disable --now keepalived.service >/dev/null 2>&1 || true
fi

# Kubelets refuse to run with swap on.
if [[ "$LAB_ROLE" != controller ]]; then
    swapoff -a
    sed -i -E 's|^([^#].*[[:space:]]swap[[:space:]].*)$|# disabled by the ipvslb lab: \1|' /etc/fstab
fi

modules=(overlay br_netfilter)
if [[ "$LAB_KIND" == controller ]]; then
    modules+=(ip_vs ip_vs_rr)
fi
printf '%s\n' "${modules[@]}" >/etc/modules-load.d/ipvslb-lab.conf
modprobe -a "${modules[@]}"

sysctls=/etc/sysctl.d/90-ipvslb-lab.conf
{
    echo "# written by the ipvslb Vagrant lab (vagrant/common.sh)"
    echo "net.ipv4.ip_forward = 1"
    if [[ "$LAB_KIND" == controller ]]; then
        # IPVS direct routing: every controller holds the VIP on dummyvip0, so only answer ARP
        # for addresses of the interface the request came in on (only the VRRP master has the
        # VIP on the lab NIC) and never use the VIP as ARP source (standard LVS-DR settings).
        echo "net.ipv4.conf.all.arp_ignore = 1"
        echo "net.ipv4.conf.all.arp_announce = 2"
    fi
} >"$sysctls"
sysctl -q -p "$sysctls"
log "base system ready ($LAB_KIND, role $LAB_ROLE)"
