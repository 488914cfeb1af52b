#!/usr/bin/env bash
# Create .venv/ beside this repository and install prunelab with its test and ONNX extras.
# torch/torchvision are pinned to the releases this project is tested with (on this project's CPU
# machines pip takes them from local disk; elsewhere from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -m pip install -q -e ".[test,onnx]" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import prunelab, torch; from prunelab.modelfile import versions; print('prunelab', prunelab.__version__, '| torch', torch.__version__, '| torch-pruning', versions()['torch_pruning'])"
