#!/usr/bin/env bash
# CI: start a one-node SLURM cluster and run the `slurm`-marked tests on it (they fail, not skip, when the cluster
# is not usable). Run from anywhere; uses the repository's .venv unless PYTHON is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
start=$(date +%s)
echo "== slurm: bash scripts/slurm_up.sh"
bash scripts/slurm_up.sh || echo "== slurm: the cluster did not start (the tests below fail with the reason)"
echo "== slurm: SEGCENTROIDS_REQUIRE_SLURM=1 $PYTHON -m pytest -m slurm"
SEGCENTROIDS_REQUIRE_SLURM=1 "$PYTHON" -m pytest -m slurm -s -p no:cacheprovider tests/test_slurm.py
rc=$?
echo "== slurm suite took $(( $(date +%s) - start )) s (exit $rc)"
[ "$rc" -eq 5 ] && { echo "CI: no slurm tests were collected: failing"; exit 1; }
exit "$rc"
