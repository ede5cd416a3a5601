# Two commands for a new user:  make repro  (run the pipeline)  and  make test  (run the tests).
# Both create .venv with the pinned versions in constraints.txt when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: repro test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

repro: install
	dvc repro

test: install
	python -m pytest -q
