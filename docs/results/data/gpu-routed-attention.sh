#!/bin/bash
# Issue 22: one device run (<= 10 min) of docs/results/data/gpu_routed_attention.py.
# Run from the repository root on a GPU machine; $OUT (default /tmp) receives the JSON and log.
# Without a GPU it runs the script's CPU dry path (tiny sizes) instead.
export PYTHONUNBUFFERED=1 CRAM_TRITON_AUTOTUNE=0
OUT=${OUT:-/tmp}
cd "$(dirname "$0")/../../.."
if [ -d .whl ]; then  # a bare device machine: the prepared wheels, then this checkout
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | grep -v WARNING | tail -2
fi
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi -L 2>/dev/null || echo "no GPU: CPU dry path"
echo "== routed attention check + bench $(date -u +%T)"
timeout 540 $PY docs/results/data/gpu_routed_attention.py "$OUT/gpu-routed-attention.json" 2>&1 | tee "$OUT/gpu-routed-attention.log"
echo "rc=${PIPESTATUS[0]} $(date -u +%T); load: $(cut -d' ' -f1-3 /proc/loadavg)"
