#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine with one NVIDIA GPU, in under 8 minutes.
# Run from the repository root:
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine: bfloat16, Qwen2.5-0.5B/1.5B shapes
#   bash benchmarks/gpu_check.sh --small         # anywhere, CPU included: tiny model, float32, a few minutes
#   SWITCHYARD_GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh   # the same as --small
#   bash benchmarks/gpu_check.sh --pack          # here, before a GPU run: packages to carry there
#
# The machine needs a Python with torch (built with CUDA, unless --small), transformers,
# safetensors and accelerate; nothing is downloaded. It takes $PYTHON when set, else .venv/bin/python
# when the checkout has one, else python3. --pack, run where the checkout's .venv is, writes
# build/gpu_site.tar.gz (about 17 MB): that venv's transformers, which the engine is tested with,
# and its bitsandbytes (section 5) cut down to the CPU and CUDA 13 libraries. Carried to the GPU
# machine with the repository, it is unpacked there and each package in it used if it imports
# with that machine's Python; if it does not, the machine's own is used, or section 5 says
# bitsandbytes is missing.
# Every other argument goes on to the Python module. With $OUT set, the tables are also written to
# $OUT/gpu_check.json and $OUT/gpu_check.txt, and the whole log to $OUT/gpu_check.log.
set -euo pipefail

cd "$(dirname "$0")/.."
PACK=build/gpu_site.tar.gz
PACKED_MODULES=(transformers bitsandbytes)

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif [[ -x .venv/bin/python ]]; then
        echo .venv/bin/python
    else
        echo python3
    fi
}

# Writes $PACK: one folder per module, site-NAME/, holding the package and its metadata
# (transformers checks bitsandbytes' version through it).
pack() {
    local python site_packages staging module
    python=$(pick_python)
    site_packages=$("$python" -c 'import os, transformers as t; print(os.path.dirname(os.path.dirname(t.__file__)))')
    staging=$(mktemp -d)
    for module in "${PACKED_MODULES[@]}"; do
        mkdir -p "$staging/site-$module"
        (cd "$site_packages" && tar --exclude __pycache__ --exclude 'libbitsandbytes_*' \
            -cf - "$module" "$module"-*.dist-info) | tar -C "$staging/site-$module" -xf -
    done
    # The prebuilt libraries for other CUDA versions and ROCm are most of bitsandbytes' 125 MB.
    cp "$site_packages"/bitsandbytes/libbitsandbytes_cpu.so "$site_packages"/bitsandbytes/libbitsandbytes_cuda13*.so \
        "$staging/site-bitsandbytes/bitsandbytes/"
    mkdir -p "$(dirname "$PACK")"
    tar -C "$staging" -czf "$PACK" .
    rm -rf "$staging"
    echo "packed $(du -h "$PACK" | cut -f1) into $PACK: carry it to the GPU machine with the repository"
}

# Unpacks $PACK, when there is one, and puts each module in it on PYTHONPATH if it imports.
use_pack() {
    local site part module
    [[ -f "$PACK" ]] || return 0
    site=${TMPDIR:-/tmp}/switchyard-gpu-site
    rm -rf "$site"
    mkdir -p "$site"
    tar -C "$site" -xzf "$PACK"
    for part in "$site"/site-*; do
        module=${part##*/site-}
        if PYTHONPATH="$part${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import $module" >/dev/null 2>&1; then
            export PYTHONPATH="$part${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "gpu_check.sh: $module from $PACK does not import with $PY; using that Python's own, if any" >&2
        fi
    done
}

small=0
args=()
for arg in "$@"; do
    case "$arg" in
        --pack) pack; exit 0 ;;
        --small) small=1 ;;
        *) args+=("$arg") ;;
    esac
done
if [[ "${SWITCHYARD_GPU_CHECK_SMALL:-0}" == 1 ]]; then
    small=1
fi

# Exits 2, saying why, unless $PY has the packages and (unless small) a GPU that torch sees.
check_python() {
    "$PY" - "$small" <<'PYTHON'
import importlib.util
import sys

needed = ("torch", "transformers", "safetensors", "accelerate")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check.sh: {sys.executable} has no {', '.join(missing)}; nothing is installed here")
import torch

if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit(
        f"gpu_check.sh: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: the full check "
        "needs one NVIDIA GPU; --small runs a shrunken check on a CPU"
    )
PYTHON
}

PY=$(pick_python)
use_pack
check_python || exit 2

# The Python budget covers the sections; the limit adds room for imports and model loading, and
# stops the run from outside if a native call hangs (the tables written so far stay in $OUT).
if [[ $small == 1 ]]; then
    args=(--small "${args[@]}")
    limit_s=300
else
    limit_s=450
fi
if [[ -n "${OUT:-}" ]]; then
    args+=(--out "$OUT")
    log="$OUT/gpu_check.log"
else
    log=/dev/null
fi
mkdir -p "$(dirname "$log")"

set +e
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit_s" "$PY" -m benchmarks.gpu_check "${args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [[ $status == 124 || $status == 137 ]]; then
    echo "gpu_check.sh: stopped at the ${limit_s}s limit; the sections that finished are above" >&2
fi
exit "$status"
