# Source this on the device machine (it reaches no registry): installs the carried wheels in .whl
# (beartype; tokamax 0.0.17 and its needs, for the peer benchmarks: `bash tools/gpu_session.sh
# --fetch-wheels` downloads them here) and this project, editable, no deps.
#   source tools/device_setup.sh
# tools/gpu_session.sh sources it before the GPU session.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  # tokamax imports get_kernel_stats_tool from xprof.cli.tools at import time; its kernels
  # never call it, so a stub module is enough.
  mkdir -p /tmp/site/xprof/cli
  touch /tmp/site/xprof/__init__.py /tmp/site/xprof/cli/__init__.py
  echo "get_kernel_stats_tool = None" > /tmp/site/xprof/cli/tools.py
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project, unless this checkout is already what `phoenix_eqx.kernels` imports.
if ! python3 -c '
import pathlib, sys, phoenix_eqx.kernels as k
sys.exit(pathlib.Path(k.__file__).resolve().parent != pathlib.Path("kernels").resolve())
' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
fi
export PYTHONUNBUFFERED=1
