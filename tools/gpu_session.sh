#!/usr/bin/env bash
# The prepared GPU session of issue 12, in one command (about 6 minutes on one H200).
#
# On the device machine, from the repository root, with .whl carried:
#   bash tools/gpu_session.sh            # full: 4 attention configs, 13 top-k rows, e2e
#   bash tools/gpu_session.sh --quick    # a few minutes less: 2 configs, 3 rows, 5 calls
# Any other option goes to `python -m benchmarks.gpu_session` (--budget-s, --iters).
# It installs the carried wheels and the project (tools/device_setup.sh), then checks and times
# everything in one process: one JSON and a log under $OUT (bench_results/ where OUT is unset),
# the tables at the end of stdout. Exit status 1 when a correctness check of ours failed.
#
# Here, once, before the device call (the device machine reaches no registry):
#   bash tools/gpu_session.sh --fetch-wheels   # downloads tokamax 0.0.17, its needs, beartype
# On the CPU, without set-up (what CI runs, in tests/test_gpu_session.py):
#   python -m benchmarks.gpu_session --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."

# tokamax 0.0.17 and what it needs beyond the device image (which has jax, flax, absl-py,
# jaxtyping, tqdm, numpy, protobuf); beartype for phoenix_eqx itself. Exact versions: the ones
# this script was written against (pydantic-core is pinned by pydantic).
WHEELS=(
  tokamax==0.0.17 einshape==1.0 qwix==0.1.8 immutabledict==4.3.1 tensorboardx==2.6.5
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 beartype==0.23.1
)

if [ "${1:-}" = "--fetch-wheels" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  ls -l .whl
  exit 0
fi

# shellcheck source=tools/device_setup.sh
source tools/device_setup.sh || { echo "gpu_session: set-up failed" >&2; exit 1; }
# JAX would otherwise take 75% of the card up front and leave the torch peers too little.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1

out="${OUT:-bench_results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv 2>&1 | tee "$out/gpu_session_device.txt"
python3 -m benchmarks.gpu_session --json "$out/gpu_session.json" "$@" 2>&1 \
  | tee "$out/gpu_session.log"
