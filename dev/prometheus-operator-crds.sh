#!/usr/bin/env bash
# Prints the directory holding prometheus-operator's CRDs (ServiceMonitor, PodMonitor,
# PrometheusRule, ...) at a pinned release, fetched as the Go module it is (the Go module
# cache keeps it; a second run is offline). The chart's tests install them so that the
# API server validates the chart's monitors and rules against their real schemas.
set -euo pipefail
version=v0.85.0
dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
test -d "$dir/example/prometheus-operator-crd"
echo "$dir/example/prometheus-operator-crd"
