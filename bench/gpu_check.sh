#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py): bash bench/gpu_check.sh [--only env,engine,...]
# At most 8 minutes on one GPU, each check under its own timeout; exits 1 if a row says FAILED (a
# check the budget cut or left out does), 2 on an unknown check name.
# Uses .venv if `make setup` made one; on a CPU the CUDA rows say "not run".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/gpu_check.py "$@"
