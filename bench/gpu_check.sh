#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py): bash bench/gpu_check.sh [--only env,engine,...]
# At most 8 minutes on one GPU, each check under its own timeout; exits 1 if a row says FAILED (a
# check the budget cut or left out does), 2 on an unknown check name, 3 where rows that need CUDA
# were not run (no GPU torch can use; --cpu: a CPU run on purpose, exit 0).
# Uses .venv if `make setup` made one; on a CPU the CUDA rows say "not run".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/gpu_check.py "$@"
