#!/usr/bin/env bash
# The GPU checks of fixed-shape batching and CUDA graphs, in one call on a lent GPU machine.
#
# Needs, beside the checkout (the device tool carries them; both are git-ignored):
#   .whl/      wheels for cp312 of what the GPU image lacks: faiss-cpu, bm25s, PyStemmer
#   runs/gpu/  the default model's config.json, tokenizer_config.json, tokenizer.json.gz
# Writes its logs and JSON figures to $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/tok
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
cp runs/gpu/config.json runs/gpu/tokenizer_config.json /tmp/tok/
gunzip -c runs/gpu/tokenizer.json.gz > /tmp/tok/tokenizer.json
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } \
    | tee "$OUT/env.txt"

timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "graphs or compiled" 2>&1 | tail -30 \
    | tee "$OUT/test_gpu.txt"

bench() {  # name, seconds, then bench_random_weights arguments
    local name=$1 limit=$2; shift 2
    timeout "$limit" python3 benchmarks/bench_random_weights.py --tokenizer /tmp/tok --device cuda \
        --json "$OUT/$name.json" "$@" 2>&1 | grep -v -E "Warning|warn\(" | tee "$OUT/$name.txt"
}
# The default model on passages (~200 tokens) and on short documents (~35): sorted vs CUDA
# graphs, then with the decoder layers compiled; kernel profile of the sorted pass.
bench gemma-passages 75 --arch gemma-3-270m --concat 8 --docs 250 --batch-size 2048 \
    --max-batch-tokens 65536 --rounds 3 --batching sorted,graphs --compile
bench gemma-short 80 --arch gemma-3-270m --docs 2000 --batch-size 2048 --max-batch-tokens 65536 \
    --rounds 3 --batching sorted,graphs --compile
bench llama-7b-short 100 --arch llama-2-7b --docs 500 --batch-size 1024 --max-batch-tokens 8192 \
    --rounds 2 --batching sorted,graphs --compile
