#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok, helm) and the real node's kubelet and kube-proxy from the pinned wrapper modules next to
# this script, into a cache outside the repository keyed by the versions and the go.mod/go.sum
# hashes. A complete cache is reused.
#
# Usage: hack/testbins/build.sh [--check]
#   stdout: the bin directory (the only line written there); progress goes to stderr.
#   --check: build nothing; exit 0 if the cache is complete, 1 if not.
# Exit status 3: no usable Go toolchain (callers may treat that as "cannot build here").
# Environment: SPECD_CACHE (default ~/.cache/specd), GO (default: go on PATH, then
#   /usr/local/go/bin/go), SPECD_TESTBINS_NICE (default 10).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

modules=(kubernetes etcd kwok helm)
key_hash="$(cd "$here" && cat versions.env "${modules[@]/%//go.mod}" "${modules[@]/%//go.sum}" | sha256sum | cut -c1-12)"
key="k8s-${K8S_VERSION}-${key_hash}"
root="${SPECD_CACHE:-$HOME/.cache/specd}/testbins/$key"
bin="$root/bin"
all_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kwok helm)

complete() {
  local b
  for b in "${all_bins[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

log() { printf '[testbins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == "--check" ]]; then
  echo "$bin"
  complete
  exit
fi
if complete; then
  log "reusing $bin"
  echo "$bin"
  exit 0
fi

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! "$go" version >/dev/null 2>&1; then
  log "no Go toolchain found (set GO=/path/to/go); cannot build the test control plane"
  exit 3
fi
# The pinned go.sum is the contract: never let the build edit the modules or switch toolchains.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
nice_level="${SPECD_TESTBINS_NICE:-10}"
mkdir -p "$bin"
# One build per cache key at a time (parallel test sessions on a cold cache): wait, then reuse.
if command -v flock >/dev/null; then
  exec 9>"$root/.lock"
  flock -n 9 || { log "another build is running into $root; waiting for it"; flock 9; }
  if complete; then
    log "reusing $bin"
    echo "$bin"
    exit 0
  fi
fi
trap 'rm -rf "$root"/build.*' EXIT # temp dirs of an interrupted or failed build
log "building into $bin with $("$go" version) (nice $nice_level)"

# Count compiled packages from `go build -v` and print a line every 100, so a long build shows life.
progress() {
  awk -v name="$1" '
    /^go: downloading/ { d++; if (d % 50 == 1) printf "  %s: downloading modules (%d)\n", name, d > "/dev/stderr"; next }
    /^[a-zA-Z0-9_.\-\/]+$/ { n++; if (n % 100 == 0) printf "  %s: %d packages compiled\n", name, n > "/dev/stderr"; next }
    { print > "/dev/stderr" }
    END { printf "  %s: %d packages compiled\n", name, n > "/dev/stderr" }'
}

# build MODULE_DIR LDFLAGS PKG:BINARY...  (builds into a temp dir, then moves into place)
build() {
  local dir="$1" ldflags="$2"; shift 2
  local pkgs=() names=() spec missing=0 start tmp
  for spec in "$@"; do
    names+=("${spec#*:}")
    pkgs+=("${spec%%:*}")
    [[ -x "$bin/${spec#*:}" ]] || missing=1
  done
  if ((missing == 0)); then
    log "${names[*]}: cached"
    return
  fi
  start=$SECONDS
  tmp="$(mktemp -d "$root/build.XXXXXX")"
  log "${names[*]}: building from $dir/go.mod"
  (cd "$here/$dir" &&
    nice -n "$nice_level" "$go" build -v -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${pkgs[@]}") 2>&1 | progress "$dir"
  local i
  for i in "${!pkgs[@]}"; do
    # go build names a binary after its package's last path element, skipping a /vN suffix.
    local out="${pkgs[$i]##*/}"
    [[ "$out" =~ ^v[0-9]+$ ]] && out="$(basename "$(dirname "${pkgs[$i]}")")"
    mv -f "$tmp/$out" "$bin/${names[$i]}"
  done
  rmdir "$tmp"
  log "${names[*]}: done in $((SECONDS - start))s"
}

module_version() { # module-dir module-path -> resolved version in that wrapper module
  (cd "$here/$1" && "$go" list -m -f '{{.Version}}' "$2")
}

# Kubernetes reports its version from these variables (hack/lib/version.sh upstream).
k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}" commit pkg flags=""
  minor="${minor%%.*}"
  commit="$(cd "$here/kubernetes" && "$go" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)",*$/\1/p' | head -1)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

total=$SECONDS
etcd_version="$(module_version etcd go.etcd.io/etcd/server/v3)"
helm_version="$(module_version helm helm.sh/helm/v3)"
kwok_version="$(module_version kwok sigs.k8s.io/kwok)"

build etcd "" go.etcd.io/etcd/server/v3:etcd
build kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}" sigs.k8s.io/kwok/cmd/kwok:kwok
build helm "-X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  helm.sh/helm/v3/cmd/helm:helm
build kubernetes "$(k8s_ldflags)" \
  k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler:kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet:kubelet \
  k8s.io/kubernetes/cmd/kube-proxy:kube-proxy

complete || { log "build finished but binaries are missing in $bin"; exit 1; }
log "all binaries ready in $((SECONDS - total))s (etcd $etcd_version, kwok $kwok_version, helm $helm_version, kubernetes $K8S_VERSION)"
echo "$bin"
