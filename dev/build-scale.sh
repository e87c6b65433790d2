#!/usr/bin/env bash
# Builds the KWOK controller (sigs.k8s.io/kwok/cmd/kwok) and the JobSet controller manager
# (sigs.k8s.io/jobset) at the versions dev/scale/go.mod pins, for `make bench-scale` and its
# smoke test, into a cache directory outside the repo tree keyed by a hash of that module's
# go.mod and go.sum (and this script). Beside them go the upstream manifests they need, from
# the same module sources: KWOK's stages (kustomize/stage) and JobSet's config/ (CRDs, RBAC,
# webhook configurations).
#
# dev/scale is a module of its own: both pin Kubernetes v0.36, like dev/kueue, not the control
# plane's v0.37. Its requirements are raised to dev/kueue's versions wherever those are newer
# (k8s.io v0.36.2, x/net, otelhttp, ...; MVS allows any upgrade): 844 of its 1,040 packages
# outside the standard library then compile exactly as Kueue's do, and come from the Go build
# cache when Kueue was built first (195 at the versions KWOK and JobSet pin).
# Prints the output directory (bin/kwok, bin/jobset, kwok-stages/, jobset-config/) on stdout;
# progress goes to stderr. Concurrent runs build once (a lock).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/scale"
cache="${LLMJOB_CACHE:-/var/cache/llmjob}"
key="$(cat "$module/go.mod" "$module/go.sum" "$here/build-scale.sh" | sha256sum | cut -c1-16)"
out="$cache/scale-$key"

built() { [[ -x "$out/bin/kwok" && -x "$out/bin/jobset" && -d "$out/jobset-config" ]]; }
if built; then
    echo "$out"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/scale-$key.lock"
flock 9
if built; then
    echo "$out"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "scale: Go >= 1.26 is needed to build KWOK and JobSet (go.dev/dl)" >&2
    exit 1
fi
cd "$module"
source_of() { go mod download -json "$1@$(go list -m -f '{{.Version}}' "$1")"; }
dir_of() { sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }
kwok_version="$(go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
jobset_version="$(go list -m -f '{{.Version}}' sigs.k8s.io/jobset)"
kwok_dir="$(source_of sigs.k8s.io/kwok | dir_of)"
jobset_dir="$(source_of sigs.k8s.io/jobset | dir_of)"
mkdir -p "$out"
partial="$(mktemp -d "$out/partial.XXXXXX")"
trap 'rm -rf "$partial"' EXIT
echo "scale: building kwok $kwok_version and jobset $jobset_version into $out" >&2
start="$(date +%s)"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"
# JobSet stamps its version as its release build does (-X); KWOK carries its own in consts.
go build -ldflags="-s -w" \
    -o "$partial/bin/kwok" sigs.k8s.io/kwok/cmd/kwok
go build -ldflags="-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=$jobset_version" \
    -o "$partial/bin/jobset" sigs.k8s.io/jobset
cp -R "$kwok_dir/kustomize/stage" "$partial/kwok-stages"
cp -R "$jobset_dir/config" "$partial/jobset-config"
chmod -R u+w "$partial"
rm -rf "$out/bin" "$out/kwok-stages" "$out/jobset-config"
mv "$partial/kwok-stages" "$partial/jobset-config" "$out/"
mv "$partial/bin" "$out/bin"
echo "scale: built in $(( $(date +%s) - start ))s, $(du -sh "$out/bin" | cut -f1)" >&2
echo "$out"
