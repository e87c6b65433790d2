#!/usr/bin/env bash
# Builds the Kueue manager (sigs.k8s.io/kueue/cmd/kueue at the version dev/kueue/go.mod pins)
# into a cache directory outside the repo tree, keyed by a hash of that module's go.mod and
# go.sum (and this script), and copies Kueue's own manifests (config/: CRDs, RBAC, webhook
# configurations, the default Configuration) from the same module source beside it.
#
# dev/kueue is a module of its own, at Kueue's own pins (Kubernetes v0.36), not part of
# dev/controlplane (v0.37): Kueue v0.19.2 does not compile against v0.37 (kubeflow/trainer's
# generated OpenAPI and scheduler-library's use of kube-scheduler internals break), so the two
# builds share few compiled packages either way (about 90 of Kueue's 1514).
# Prints the output directory (bin/kueue, config/) on stdout; progress goes to stderr.
# Concurrent runs (a test session's niced head start and its Kueue fixture, or two checkouts)
# build once: the later ones wait on a lock and find the result.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/kueue"
cache="${LLMJOB_CACHE:-/var/cache/llmjob}"
key="$(cat "$module/go.mod" "$module/go.sum" "$here/build-kueue.sh" | sha256sum | cut -c1-16)"
out="$cache/kueue-$key"

built() { [[ -x "$out/bin/kueue" && -d "$out/config" ]]; }
if built; then
    echo "$out"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/kueue-$key.lock"
flock 9
if built; then
    echo "$out"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "kueue: Go >= 1.26 is needed to build Kueue for the local cluster (go.dev/dl)" >&2
    exit 1
fi
cd "$module"
version="$(go list -m -f '{{.Version}}' sigs.k8s.io/kueue)"
# The module proxy records the tag's commit (Origin.Hash), as Kueue's own release build
# stamps it with -X.
download="$(go mod download -json "sigs.k8s.io/kueue@$version")"
source_dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$download")"
commit="$(sed -n 's/^\t\t"Hash": "\(.*\)",$/\1/p' <<<"$download")"
ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version"
ldflags+=" -X sigs.k8s.io/kueue/pkg/version.GitCommit=${commit:-unknown}"
mkdir -p "$out/bin"
partial="$(mktemp -d "$out/partial.XXXXXX")"
trap 'rm -rf "$partial"' EXIT
echo "kueue: building sigs.k8s.io/kueue/cmd/kueue $version into $out" >&2
start="$(date +%s)"
GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath" go build -ldflags="$ldflags" -o "$partial/kueue" \
    sigs.k8s.io/kueue/cmd/kueue
cp -R "$source_dir/config" "$partial/config"
chmod -R u+w "$partial/config"
mv "$partial/kueue" "$out/bin/kueue"
rm -rf "$out/config"
mv "$partial/config" "$out/config"
echo "kueue: built in $(( $(date +%s) - start ))s, $(du -sh "$out/bin/kueue" | cut -f1)" >&2
echo "$out"
