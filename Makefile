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
	$(BIN)/setpipe datagen jets --out $(DATA) --train 4000 --validation 1000 --test 1000 --seed 0 --overwrite
	SETPIPE_DATA=$(WORKDIR)/data $(BIN)/setpipe validate jobs/quickstart.yaml
	SETPIPE_DATA=$(WORKDIR)/data $(BIN)/setpipe run jobs/quickstart.yaml --workdir $(WORKDIR)

# One pytest process per group: each starts its own Ray and MLflow state, so one group's
# clusters, Serve apps and global MLflow settings cannot leak into the next. Every group
# runs; the target fails if any did.
TEST_GROUPS := "tests/spec tests/models tests/test_*.py" \
	tests/data tests/tracking tests/train tests/export tests/serve tests/jobs

test: install
	$(BIN)/ruff check setpipe tests bench
	@status=0; for group in $(TEST_GROUPS); do \
		echo "== pytest $$group"; \
		$(BIN)/python -m pytest -q $$group || status=1; \
	done; exit $$status

lint: install
	$(BIN)/ruff check setpipe tests bench
	$(BIN)/ruff format --check setpipe tests bench

schema: install
	$(BIN)/setpipe schema

clean:
	rm -rf $(WORKDIR) .pytest_cache .ruff_cache
