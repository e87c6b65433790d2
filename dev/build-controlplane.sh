#!/usr/bin/env bash
# Builds the local cluster's Kubernetes programs (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, helm) from the pinned Go module in
# dev/controlplane into a cache directory outside the repo tree, keyed by a hash of the
# module's go.mod, go.sum and main.go (and this script): a rebuild happens only when a pin
# or the build changes.
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/controlplane"
cache="${LLMJOB_CACHE:-/var/cache/llmjob}"
key="$(cat "$module/go.mod" "$module/go.sum" "$module/main.go" "$here/build-controlplane.sh" | sha256sum | cut -c1-16)"
out="$cache/k8s-$key"
programs=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)

if [[ -x "$out/bin/controlplane" ]]; then
    echo "$out/bin"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "controlplane: Go >= 1.26 is needed to build the local cluster (go.dev/dl)" >&2
    exit 1
fi
mkdir -p "$out/bin"
cd "$module"
echo "controlplane: building ${programs[*]} into $out (first build: tens of minutes on 2 cores)" >&2
total="$(go list -deps . | wc -l)"
# Stamp the pinned versions into the binaries (upstream's release build does the same
# with -X); without this every program reports v0.0.0-master.
k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
helm_version="$(go list -m -f '{{.Version}}' helm.sh/helm/v4)"
ldflags="-s -w"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $package.gitVersion=$k8s_version -X $package.gitMajor=1"
    ldflags+=" -X $package.gitMinor=$k8s_minor -X $package.gitTreeState=clean"
done
ldflags+=" -X helm.sh/helm/v4/internal/version.version=$helm_version"
ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=v$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
start="$(date +%s)"
# -v names each package as it is compiled; count them to show progress without flooding.
go build -v -trimpath -ldflags="$ldflags" -o "$out/bin/controlplane.partial" . 2>&1 |
    awk -v total="$total" -v start="$start" '
        /^[a-zA-Z0-9_.\/-]+$/ { n++; if (n % 100 == 0) { printf "controlplane: compiled %d packages (of at most %d), %ds\n", n, total, systime() - start > "/dev/stderr"; fflush("/dev/stderr") }; next }
        { print > "/dev/stderr" }'
mv "$out/bin/controlplane.partial" "$out/bin/controlplane"
for program in "${programs[@]}"; do
    ln -sf controlplane "$out/bin/$program"
done
echo "controlplane: built in $(( $(date +%s) - start ))s, $(du -sh "$out" | cut -f1)" >&2
echo "$out/bin"
