#!/usr/bin/env bash
# Creates or reuses the project's virtualenv (outside the repo tree) and prints its path last.
# Dependencies are reinstalled only when pyproject.toml or constraints.txt change, with the project
# itself editable for its console scripts; the Makefile puts the running checkout's
# sources first on PYTHONPATH, so several checkouts (CI's clone, worktrees) share one venv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${LLMJOB_VENV:?}
python_base=${PYTHON_BASE:-python3}

if [[ ! -x $venv/bin/python ]]; then
  echo "creating virtualenv $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$python_base" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools wheel >&2
fi

deps_key=$(cat "$repo/pyproject.toml" "$repo/constraints.txt" | sha256sum | cut -c1-16)
stamp=$venv/.llmjob-deps
if [[ ! -f $stamp || $(cat "$stamp") != "$deps_key" ]]; then
  echo "installing dependencies into $venv (the first time downloads torch: a few minutes)" >&2
  "$venv/bin/pip" install --progress-bar off -c "$repo/constraints.txt" -e "$repo[operator,trainer,dev]" >&2
  echo "$deps_key" >"$stamp"
fi

# DeepSpeed's CPU backend needs its shared-memory comm op. Built into the install (as the
# trainer image does) rather than JIT-compiled into each pod's cache: a JIT build costs every
# new gang one to two minutes of compiling on a worker's CPUs.
if ! "$venv/bin/python" -c "
import sys
from deepspeed.git_version_info import installed_ops
sys.exit(0 if installed_ops.get('deepspeed_shm_comm') else 1)" >/dev/null 2>&1; then
  echo "building DeepSpeed's CPU shared-memory comm op into the venv (once; a few minutes)" >&2
  ds_version=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('deepspeed'))")
  DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 "$venv/bin/pip" install --progress-bar off \
    --no-build-isolation --no-cache-dir --no-deps --force-reinstall "deepspeed==$ds_version" >&2
fi

echo "$venv"
