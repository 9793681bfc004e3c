#!/usr/bin/env bash
# Helpers shared by the ipvslb Vagrant lab's provisioning scripts (sourced, never run).
# Every wait is bounded; every step can run again (`vagrant provision`).
#
# The Vagrantfile passes the node's facts as LAB_* environment variables (see the Vagrantfile).
# shellcheck disable=SC2034  # the constants below are used by the scripts sourcing this file

K0S_BIN=/usr/local/bin/k0s
K0S_CONFIG=/etc/k0s/k0s.yaml
K0S_ADMIN_KUBECONFIG=/var/lib/k0s/pki/admin.conf
LAB_STATE=/var/lib/ipvslb-lab
# Served by the first controller on the lab network (encrypted files only).
LAB_SHARE_PORT=${LAB_SHARE_PORT:-8765}
IPVSLB_VENV=/opt/ipvslb/venv

log() {
    printf '==> ipvslb-lab %s: %s\n' "${LAB_NODE:-?}" "$*"
}

die() {
    printf 'error: ipvslb-lab %s: %s\n' "${LAB_NODE:-?}" "$*" >&2
    exit 1
}

# require_env NAME...: fail with one clear line when the Vagrantfile did not pass a variable.
require_env() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "$name is not set (run this script through the Vagrantfile)"
    done
}

# wait_for DESCRIPTION TRIES DELAY COMMAND...: run COMMAND until it succeeds, at most TRIES
# times DELAY seconds apart; fail naming DESCRIPTION.
wait_for() {
    local what=$1 tries=$2 delay=$3 i
    shift 3
    for ((i = 1; i <= tries; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep "$delay"
    done
    die "timed out after $((tries * delay)) s waiting for $what"
}

# interface_of ADDRESS: the name of the interface holding ADDRESS (Vagrant's private network
# NIC is eth1 on Debian's boxes, enp0s8 or ens6 on others: look it up instead of guessing).
interface_of() {
    ip -o addr show | awk -v want="$1" '{ split($4, a, "/"); if (a[1] == want) { print $2; exit } }'
}

# install_k0s VERSION: put that k0s release at $K0S_BIN (downloaded from GitHub; skipped when
# it is already there).
install_k0s() {
    local version=$1 arch url tmp
    if [[ -x "$K0S_BIN" ]] && [[ "$("$K0S_BIN" version 2>/dev/null)" == "$version" ]]; then
        log "k0s $version already installed"
        return 0
    fi
    arch=$(dpkg --print-architecture)
    case "$arch" in
        amd64 | arm64) ;;
        *) die "no k0s release for architecture $arch" ;;
    esac
    url="https://github.com/k0sproject/k0s/releases/download/${version}/k0s-${version}-${arch}"
    log "downloading k0s $version ($url)"
    tmp=$(mktemp "${K0S_BIN}.XXXXXX")
    if ! curl -fsSL --retry 5 --retry-delay 3 --max-time 600 -o "$tmp" "$url"; then
        rm -f "$tmp"
        die "could not download $url; check the version (IPVSLB_LAB_K0S_VERSION) and the VM's internet access"
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$K0S_BIN"
    [[ "$("$K0S_BIN" version)" == "$version" ]] || die "$K0S_BIN does not report version $version"
}

# render_k0s_config TEMPLATE ADDRESS VIP API_PORT: print the node's k0s ClusterConfig.
render_k0s_config() {
    local template=$1 address=$2 vip=$3 port=$4
    [[ -r "$template" ]] || die "no k0s config template at $template"
    sed -e "s|@ADDRESS@|${address}|g" -e "s|@VIP@|${vip}|g" -e "s|@API_PORT@|${port}|g" \
        "$template"
}

# install_if_changed SOURCE DEST MODE: copy SOURCE to DEST atomically when the content or mode
# differs; exit status 0 when DEST changed, 1 when it was already so.
install_if_changed() {
    local source=$1 dest=$2 mode=$3
    if [[ -f "$dest" ]] && cmp -s "$source" "$dest" \
        && [[ "$(stat -c %a "$dest")" == "${mode#0}" ]]; then
        return 1
    fi
    install -D -m "$mode" "$source" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    return 0
}

# encrypt_to SOURCE DEST: DEST = SOURCE encrypted with the lab secret (written atomically).
encrypt_to() {
    require_env LAB_SECRET
    openssl enc -aes-256-cbc -pbkdf2 -salt -pass env:LAB_SECRET -in "$1" -out "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

# fetch_shared NAME DEST: download NAME from the first controller's share and decrypt it to
# DEST (mode 0600). Waits up to 40 minutes: the first controller may still be installing k0s.
fetch_shared() {
    local name=$1 dest=$2 url tmp
    require_env LAB_FIRST_ADDRESS LAB_SECRET
    url="http://${LAB_FIRST_ADDRESS}:${LAB_SHARE_PORT}/${name}.enc"
    tmp=$(mktemp)
    log "fetching $name from $LAB_FIRST_CONTROLLER ($url)"
    wait_for "$url (is $LAB_FIRST_CONTROLLER up and provisioned?)" 240 10 \
        curl -fsS --max-time 10 -o "$tmp" "$url"
    install -d -m 0700 "$(dirname "$dest")"
    if ! (umask 077 && openssl enc -d -aes-256-cbc -pbkdf2 -pass env:LAB_SECRET \
        -in "$tmp" -out "$dest"); then
        rm -f "$tmp"
        die "cannot decrypt $name: the lab secret differs from $LAB_FIRST_CONTROLLER's (re-provision it: vagrant provision $LAB_FIRST_CONTROLLER)"
    fi
    rm -f "$tmp"
}

# wait_for_api: the local apiserver answers /readyz (k0s's admin kubeconfig).
wait_for_api() {
    log "waiting for the local kube-apiserver"
    wait_for "the local kube-apiserver (/readyz)" 180 5 \
        "$K0S_BIN" kubectl --kubeconfig "$K0S_ADMIN_KUBECONFIG" get --raw=/readyz
}
