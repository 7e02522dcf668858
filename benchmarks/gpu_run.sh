#!/usr/bin/env bash
# One GPU session's measurements, in stages with a timeout each. Run from the repository root:
#
#   benchmarks/gpu_run.sh fetch                    # HERE, with pip access: wheels the GPU machine lacks -> .whl/
#   benchmarks/gpu_run.sh [STAGE...]               # THERE: default stages preflight tests large small
#
# Stages (rough H200 cost with a cold compile cache, in seconds):
#   preflight  versions, GPU name, `import vit_zoo` (fails fast)                                           ~10
#   tests      pytest -m gpu: compiled (inductor, CUDA graphs) vs eager by relative norm                    ~150
#   large      bench_speed: LARGE_MODELS, bf16, batch LARGE_BATCH, eager + torch.compile (all peers)        ~330
#   small      bench_speed: SMALL_MODELS, bf16, SMALL_BATCHES under mode="reduce-overhead" (CUDA graphs),
#              timm vs vit_zoo                                                                              ~240
# The wheels in .whl/ (open_clip_torch, ftfy, wcwidth) install with pip --no-index into /tmp/site.
# Results: $OUT (default benchmarks/results/gpu-run) gets results.tar.gz (every stage's JSON, tables, kernel
# profiles, plots, logs; re-packed after each stage, so a run cut short keeps the finished stages),
# summary.md (the tables) and run.log.
# Knobs (environment): DEVICE LARGE_MODELS LARGE_BATCH SMALL_MODELS SMALL_BATCHES DTYPE ROUNDS WARMUP
# T_TESTS T_LARGE T_SMALL. A CPU dry run of the whole script on the tiny test entry:
#   DEVICE=cpu DTYPE=float32 LARGE_MODELS=vit_zoo_tiny_patch8_test_32 SMALL_MODELS=vit_zoo_tiny_patch8_test_32 \
#     LARGE_BATCH=2 SMALL_BATCHES="1 2" ROUNDS=2 OUT=/tmp/gpu-dry-run benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
WHEEL_PINS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)  # pure-Python; the GPU image has their other needs

if [ "${1:-}" = fetch ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "${WHEEL_PINS[@]}"
    exit
fi

DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
LARGE_MODELS=${LARGE_MODELS:-ViT-B/16 ViT-L/14}
LARGE_BATCH=${LARGE_BATCH:-256}
SMALL_MODELS=${SMALL_MODELS:-ViT-B/16}
SMALL_BATCHES=${SMALL_BATCHES:-1 8 32}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-3}
OUT=${OUT:-benchmarks/results/gpu-run}
WORK=$(mktemp -d)
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1

pack() {  # every finished stage's files into $OUT (at most a few files come back from the GPU machine)
    tar -czf "$OUT/results.tar.gz" -C "$WORK" .
    local table
    for table in "$WORK"/*/speed_*.md; do
        case $table in *_kernels.md | *'*'*) ;; *) cat "$table" ;; esac
    done > "$OUT/summary.md"
}
trap pack EXIT

stage() {  # stage NAME TIMEOUT_S COMMAND...: run with a timeout, log the outcome, keep going
    local name=$1 limit=$2
    shift 2
    mkdir -p "$WORK/$name"
    echo "=== $name (timeout ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=30 "$limit" "$@" 2>&1 | tee "$WORK/$name/log.txt"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start))s$([ "$status" = 124 ] || [ "$status" = 137 ] && echo ' (TIMED OUT)')"
    pack
}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

BENCH=($PYTHON benchmarks/bench_speed.py --device "$DEVICE" --dtype "$DTYPE" --rounds "$ROUNDS" --warmup "$WARMUP" --compile)
for name in ${@:-preflight tests large small}; do
    case $name in
    preflight)
        stage preflight 120 $PYTHON -c "import torch, timm, transformers, open_clip, vit_zoo; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'); \
print('timm', timm.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__, open_clip.__file__, 'vit_zoo', vit_zoo.__file__)" ;;
    tests)
        stage tests "${T_TESTS:-300}" $PYTHON -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_compile.py ;;
    large)
        # shellcheck disable=SC2086  # model lists split on spaces
        stage large "${T_LARGE:-480}" "${BENCH[@]}" --models $LARGE_MODELS --batch-sizes "$LARGE_BATCH" --output-dir "$WORK/large" ;;
    small)
        # shellcheck disable=SC2086
        stage small "${T_SMALL:-360}" "${BENCH[@]}" --compile-mode reduce-overhead --models $SMALL_MODELS \
            --batch-sizes $SMALL_BATCHES --cases "timm compiled" "vit_zoo compiled" --output-dir "$WORK/small" ;;
    *)
        echo "unknown stage $name (stages: fetch preflight tests large small)" && exit 2 ;;
    esac
done
