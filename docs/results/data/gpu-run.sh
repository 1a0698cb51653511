#!/bin/bash
# one device run: install, check the ops against references on CUDA, then the benchmarks
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | grep -v WARNING | tail -2
python3 -c "import cramkit.gpu.model; print('import ok')" || exit 3
export CRAM_TRITON_AUTOTUNE=0
# routed attention as before issue 22 (the auto rule would measure every backend, compiling FlexAttention, per shape class)
export CRAM_ROUTED_ATTENTION_BACKEND=${CRAM_ROUTED_ATTENTION_BACKEND:-triton}
echo "== ops check $(date +%T)"
timeout 75 python3 .devchk/gpu_ops_check.py > $OUT/ops_check.txt 2>&1; echo "ops rc=$?"; cat $OUT/ops_check.txt | tail -12
echo "== bench kernels $(date +%T)"
timeout 60 cram bench kernels --device cuda --t 4096,16384 --ops routed_attention,ssm_scan --repeats 5 --json > $OUT/kernels_cuda.json 2> $OUT/kernels_cuda.err; echo "kernels rc=$?"; tail -3 $OUT/kernels_cuda.err
echo "== bench model $(date +%T)"
timeout 140 cram bench model --device cuda --t 4096,16384 --repeats 3 --decode-steps 16 --json --plot $OUT/model_cuda.png > $OUT/model_cuda.json 2> $OUT/model_cuda.err; echo "model rc=$?"; tail -5 $OUT/model_cuda.err
echo "== done $(date +%T)"
