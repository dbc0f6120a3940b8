#!/usr/bin/env bash
# The Debian packages behind the dev cluster's real node and the image build: containerd, runc,
# the CNI plugins, iptables (the node), buildah and mmdebstrap (images without a Docker engine).
# Installs what is missing with apt-get (as root); exit status 3 when it cannot (not root, no apt).
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables buildah mmdebstrap)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
((${#missing[@]} == 0)) && exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "the real node needs these Debian packages: ${missing[*]} (apt-get install as root)" >&2
  exit 3
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
