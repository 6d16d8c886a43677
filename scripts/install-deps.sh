#!/usr/bin/env bash
# Installs what userwall and its tests need, only when missing: nft (nftables), ip (iproute2),
# sysctl (procps), useradd/userdel (passwd), setpriv (util-linux), systemd-analyze (systemd,
# which the tests use to verify the boot unit) and valgrind (for the WFP fake-engine tests).
# Debian and Ubuntu; run as root.
set -euo pipefail

declare -A package_of=([nft]=nftables [ip]=iproute2 [sysctl]=procps [useradd]=passwd
    [userdel]=passwd [setpriv]=util-linux [systemd-analyze]=systemd [valgrind]=valgrind)
missing=()
for tool in nft ip sysctl useradd userdel setpriv systemd-analyze valgrind; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        missing+=("${package_of[$tool]}")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]}; run this script as root to install them" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# sort -u: two tools can come from one package.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
