# The README's two commands: `make demo` (the main job end to end) and `make test`.
# Each does its own set-up: a virtual environment in .venv with setpipe installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= .setpipe
DATA := $(WORKDIR)/data/quickstart

.PHONY: install demo test lint schema clean

install: $(VENV)/.installed

# Re-install when the dependency list changes. torch==2.13.0 resolves to the CPU wheel
# on these machines; on a GPU machine install the CUDA build of 2.13.0 first (README).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,hep]'
	touch $@

# The quickstart job reads ${SETPIPE_DATA:-.setpipe/data}: pointed at this WORKDIR's data,
# so `make demo WORKDIR=/tmp/w` trains on the data it just made.
demo: install
	$(BIN)/setpipe datagen jets --out $(DATA) --train 4000 --validation 1000 --test 1000 --seed 0
	SETPIPE_DATA=$(WORKDIR)/data $(BIN)/setpipe validate jobs/quickstart.yaml
	SETPIPE_DATA=$(WORKDIR)/data $(BIN)/setpipe run jobs/quickstart.yaml --workdir $(WORKDIR)

test: install
	$(BIN)/ruff check setpipe tests bench
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check setpipe tests bench
	$(BIN)/ruff format --check setpipe tests bench

schema: install
	$(BIN)/setpipe schema

clean:
	rm -rf $(WORKDIR) .pytest_cache .ruff_cache
