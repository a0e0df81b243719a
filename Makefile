# modality-hub developer tasks. `make demo` installs everything and runs the demo;
# `make test` runs the test suite. Both work on a fresh machine (Python 3.10+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PLUGINS  := plugins/text plugins/image plugins/audio plugins/graph plugins/3d plugins/starter adapters/transformers
EXAMPLES := examples/plugin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install demo test standalone clean

$(VENV)/.installed: pyproject.toml constraints-dev.txt Makefile $(foreach p,$(PLUGINS) $(EXAMPLES),$(p)/pyproject.toml)
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng) \
	  || echo "warning: install espeak-ng (apt-get install espeak-ng) for the starter pack's spoken words"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77,<82" wheel
	$(PIP) install -q -c constraints-dev.txt torch torchaudio
	$(PIP) install -q -c constraints-dev.txt --no-build-isolation -e ".[test,onnx,starter,serve,ray,datasets,lance]" $(foreach p,$(PLUGINS) $(EXAMPLES),-e $(p))
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mhub demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info */*.egg-info */*/*.egg-info

# Each plugin installs and works alone next to the core (a venv per plugin; slow: run by CI).
standalone:
	PYTHON=$(PYTHON) bash scripts/check_standalone.sh

# sentence-transformers' ONNX backend, the baseline of benchmarks/onnx_text.py: optimum-onnx pins an older
# transformers, so these live in their own directory ($(ST_ONNX), inside the venv) that the benchmark puts first
# on PYTHONPATH of its st-onnx worker (torch, onnxruntime and the rest come from the venv).
ST_ONNX ?= $(VENV)/st-onnx
.PHONY: bench-deps
bench-deps:
	test -f $(VENV)/.installed || $(MAKE) install
	$(PIP) install -q --no-deps --upgrade --target $(ST_ONNX) "sentence-transformers==5.7.0" "transformers==4.57.6" \
	  "tokenizers==0.22.2" "huggingface_hub==0.36.2" "optimum==2.1.0" "optimum-onnx==0.1.0"
