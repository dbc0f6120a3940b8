#!/usr/bin/env bash
# Build the operator and worker/router images from docker/ without a Docker engine or a registry:
# a Debian base made with mmdebstrap from Debian packages, the project's own Dockerfiles built by
# buildah on top of it (`--build-arg BASE=...`), and, with --containerd, the images imported into
# a containerd (the dev cluster's real node).
#
# Usage: hack/images/build.sh [--containerd SOCKET] [--tag TAG]
#   stdout: one line per image (localhost/specd:TAG, localhost/specd-operator:TAG, and the pause
#   image the real node's containerd uses as its sandbox); progress goes to stderr.
# Caches (under ${SPECD_CACHE:-~/.cache/specd}/images): the base root file system (keyed by its
# package list and the Debian snapshot of this machine's apt sources), buildah's storage with
# every layer (the torch + DeepSpeed layer is rebuilt only when its Dockerfile lines change), and
# an import is skipped when containerd already holds the image built from the same inputs.
# Exit status 3: a tool is missing (callers may treat that as "cannot build images here").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tag=dev
containerd_socket=""
while (($#)); do
  case "$1" in
    --containerd) containerd_socket="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || { log "$tool not found (apt-get install mmdebstrap buildah)"; exit 3; }
done
if [[ -n "$containerd_socket" ]] && ! command -v ctr >/dev/null; then
  log "ctr not found (apt-get install containerd)"; exit 3
fi

cache="${SPECD_CACHE:-$HOME/.cache/specd}/images"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time per cache (buildah's storage is shared)
buildah=(buildah --root "$cache/buildah/root" --runroot "$cache/buildah/run" --storage-driver overlay)

# --- the Debian base: python3 + a virtual environment on PATH, as `pip`/`python` in python:*-slim
suite=bookworm
packages=python3,python3-venv,ca-certificates
mirrors=("deb http://deb.debian.org/debian $suite main" "deb http://deb.debian.org/debian-security $suite-security main")
base_key="$(printf '%s\n' "$suite" "$packages" "${mirrors[@]}" | cat - /etc/apt/sources.list.d/* 2>/dev/null | sha256sum | cut -c1-12)"
base="localhost/specd-base:$suite-$base_key"
if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  rootfs="$cache/rootfs-$base_key.tar"
  if [[ ! -s "$rootfs" ]]; then
    log "making the base root file system with mmdebstrap ($suite: $packages)"
    mmdebstrap --quiet --variant=minbase --include="$packages" --format=tar \
      --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
      "$suite" "$rootfs.tmp" "${mirrors[@]}"
    mv "$rootfs.tmp" "$rootfs"
  fi
  log "importing $base"
  c="$("${buildah[@]}" from scratch)"
  "${buildah[@]}" add "$c" "$rootfs" / >/dev/null
  # PIP_CERT: pip in a venv trusts its own certifi bundle; during builds the host's CA bundle
  # is mounted over the system one (proxies with a private CA), so point pip at that path.
  "${buildah[@]}" config --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --env LANG=C.UTF-8 --cmd '["/bin/bash"]' "$c"
  "${buildah[@]}" commit --quiet --rm "$c" "$base" >/dev/null
fi

# --- the sandbox ("pause") image of the real node: the base, waiting for SIGTERM
pause="localhost/specd-pause:$suite-$base_key"
if ! "${buildah[@]}" inspect --type image "$pause" >/dev/null 2>&1; then
  c="$("${buildah[@]}" from --pull=never "$base")"
  "${buildah[@]}" config --entrypoint '["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' \
    --cmd '[]' "$c"
  "${buildah[@]}" commit --quiet --rm "$c" "$pause" >/dev/null
fi

# --- the project's images, from the Dockerfiles users build with `docker build`
build() { # dockerfile image; the build's output goes to a log, shown when it fails
  local out="$cache/build-${2//[\/:]/_}.log" start=$SECONDS
  if ! (cd "$repo" && "${buildah[@]}" bud --layers --pull=never --network host \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg "BASE=$base" -f "$1" -t "$2" . >"$out" 2>&1); then
    tail -40 "$out" >&2
    log "building $2 from $1 failed (whole log: $out)"
    exit 1
  fi
  log "built $2 from $1 in $((SECONDS - start))s"
}
build docker/specd.Dockerfile "localhost/specd:$tag"
build docker/operator.Dockerfile "localhost/specd-operator:$tag"
images=("localhost/specd:$tag" "localhost/specd-operator:$tag" "$pause")
# Layers of earlier builds that no image uses any more (each source change leaves some).
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true

# --- into containerd, unless it already holds the same image (same image id). Only the layers
# it lacks travel: buildah writes the image as a `dir:` copy with uncompressed layers (so blob
# digests are the layers' diff ids, as containerd stores them), and the OCI archive given to
# `ctr images import` holds the manifest, the config and only the layers containerd does not
# have (it finds the others in its content store). After a source change one small layer goes
# in, not the 7 GiB of torch and CUDA libraries (buildah still writes the whole copy: ~1.5 min).
if [[ -n "$containerd_socket" ]]; then
  ctr=(ctr --address "$containerd_socket" -n k8s.io)
  free_gib=$(( $(df --output=avail -k "$cache" | tail -1) / 1048576 ))
  if (( free_gib < 10 )); then # the uncompressed copy of the worker image alone takes 7.4 GiB
    log "only ${free_gib} GiB free under $cache: importing needs about 10 GiB"
    exit 1
  fi
  for image in "${images[@]}"; do
    id="$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")"
    if "${ctr[@]}" images ls "name==$image" 2>/dev/null | grep -q "specd.io/image-id=$id"; then
      log "$image: already in containerd"
      continue
    fi
    log "importing $image into containerd"
    copy="$cache/dir-copy"
    rm -rf "$copy"
    "${buildah[@]}" push --quiet --disable-compression --format oci "$image" "dir:$copy" >&2
    python3 "$here/oci_archive.py" "$copy" "$image" "$cache/import.tar" \
      <("${ctr[@]}" content ls -q 2>/dev/null)
    "${ctr[@]}" images import "$cache/import.tar" >/dev/null
    "${ctr[@]}" images label "$image" "specd.io/image-id=$id" >/dev/null
    rm -rf "$cache/import.tar" "$copy"
  done
fi
printf '%s\n' "${images[@]}"
