#!/usr/bin/env bash
# Installs Prometheus (and promtool) from Debian for the chart's monitoring tests.
# Idempotent: does nothing when both are already on PATH. Needs root (CI runs as root).
# Debian's package may try to start its own service; the tests never use it: they start
# their own Prometheus on a free loopback port with a throwaway config and storage.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh machine may be missing or stale: update once, then retry.
if ! apt-get install -y --no-install-recommends prometheus >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends prometheus >&2
fi
prometheus --version >&2
