#!/usr/bin/env bash
# The first check on a GPU machine: bf16 MFU of the dense arches at production shapes, the dense training
# step under torch.cuda.set_sync_debug_mode("error"), the gpu-marked tests that need no TorchRec.
# Plain torch + CUDA is enough (no TorchRec, FBGEMM or DeepSpeed); at most 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh                        # -> benchmarks/results/gpu_check_<device>.json, mfu_gpu.json
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out-dir /tmp/check   # the same code on CPU, tiny shapes
#
# Extra arguments go to benchmarks/gpu_check.py (--models, --budget-s, --skip-tests ...). Python: $PYTHON,
# else the repository's .venv, else python3. Exits non-zero when anything failed, or after 8 minutes.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
  python="$root/.venv/bin/python"
else
  python="python3"
fi
limit_s="${GPU_CHECK_LIMIT_S:-480}"
cd "$root" || exit 2
PYTHONUNBUFFERED=1 timeout --kill-after=15 "$limit_s" "$python" benchmarks/gpu_check.py "$@"
status=$?
if [[ $status -eq 124 || $status -eq 137 ]]; then
  echo "gpu_check: stopped after ${limit_s} s (the check's limit); see the output above for the last stage" >&2
fi
exit $status
