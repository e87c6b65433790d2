#!/usr/bin/env bash
# Builds the pinned actionlint (github.com/rhysd/actionlint, from the Go module proxy) once
# into $LLMJOB_CACHE, like the control plane, and prints the binary's path.
set -euo pipefail
version=v1.7.12
cache="${LLMJOB_CACHE:-/var/cache/llmjob}"
out="$cache/actionlint-$version"
if [[ ! -x $out/actionlint ]]; then
  command -v go >/dev/null || { echo "actionlint: Go is needed to build it (go.dev/dl)" >&2; exit 1; }
  echo "actionlint: building $version into $out (once)" >&2
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' \
    "github.com/rhysd/actionlint/cmd/actionlint@$version" >&2
fi
echo "$out/actionlint"
