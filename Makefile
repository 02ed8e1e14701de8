# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
# `make test` lints and runs every test; `make test-fast` leaves out the tests marked slow (under a minute).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo lint test test-fast clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed-train: pyproject.toml | $(PY)
	$(PIP) -e '.[train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.installed-train

demo: $(VENV)/.installed-train
	$(VENV)/bin/vovnet train

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q -n 2 tests

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 -m "not slow" tests

clean:
	rm -rf $(VENV) runs
