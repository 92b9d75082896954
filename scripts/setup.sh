#!/usr/bin/env bash
# Make .venv and install recscale with the matched torch / torchrec / fbgemm-gpu set for this machine.
#
#   bash scripts/setup.sh            # idempotent: does nothing when .venv is already up to date
#   RECSCALE_FORCE=1 bash scripts/setup.sh   # reinstall
#
# Variants (the matched sets that work together; README, Set-up):
#   CUDA machine (nvidia-smi works): torch 2.13 + fbgemm-gpu 1.8.0 (CUDA) + torchrec 1.8.0.
#   CPU machine: torch 2.13 + fbgemm-gpu-cpu 1.8.0 + torchrec 1.8.0 installed without its
#   dependencies (its metadata asks for the CUDA fbgemm-gpu) plus the dependencies it really needs.
# RECSCALE_TORCH_INDEX=<url> installs torch from that index (e.g. https://download.pytorch.org/whl/cpu
# to avoid PyPI's multi-GB CUDA build on a CPU-only machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${RECSCALE_VENV:-.venv}
TORCH_VERSION=2.13.0
TORCHREC_VERSION=1.8.0
FBGEMM_VERSION=1.8.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  variant=cuda
else
  variant=cpu
fi

stamp="$VENV/.recscale-setup"
want="$variant $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -z "${RECSCALE_FORCE:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date ($variant)"
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "recscale needs Python >= 3.10")'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
# setuptools reminds every editable install that a folder named like the package could shadow it
export PYTHONWARNINGS="ignore:Editable installation"

echo "[setup] installing the $variant variant into $VENV"
pip install -q --upgrade pip
torch_args=()
[ -n "${RECSCALE_TORCH_INDEX:-}" ] && torch_args=(--index-url "$RECSCALE_TORCH_INDEX")
pip install -q "torch==$TORCH_VERSION" "${torch_args[@]}"
if [ "$variant" = cuda ]; then
  pip install -q "fbgemm-gpu==$FBGEMM_VERSION" "torchrec==$TORCHREC_VERSION"
  pip install -q -e ".[dev]"
else
  pip uninstall -q -y fbgemm-gpu >/dev/null 2>&1 || true
  pip install -q "fbgemm-gpu-cpu==$FBGEMM_VERSION"
  # what torchrec 1.8.0 imports at run time, less the CUDA fbgemm-gpu
  pip install -q tensordict "torchmetrics==1.0.3" tqdm pyre-extensions
  pip install -q -e ".[dev]"
  # last, and without its dependencies: its metadata names the CUDA fbgemm-gpu, which pip would then
  # report missing after every later install (fbgemm-gpu-cpu provides the same module)
  pip install -q --no-deps "torchrec==$TORCHREC_VERSION"
fi
[ "$variant" = cpu ] && export DS_ACCELERATOR=cpu  # else DeepSpeed warns that it found no GPU
"$VENV/bin/python" - <<'PY'
import torch, torchrec, fbgemm_gpu, deepspeed, torchx, pyarrow  # noqa: F401  (a broken set fails here)
print(f"[setup] torch {torch.__version__}, torchrec {torchrec.__version__}, deepspeed {deepspeed.__version__}, "
      f"torchx {torchx.__version__}, pyarrow {pyarrow.__version__}")
PY
echo "$want" > "$stamp"
