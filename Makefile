# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test clean

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

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) runs
