# Two commands: `make setup` (creates .venv with everything, offline models included), `make test`.
PY := .venv/bin/python

.PHONY: setup test test-fast
setup:
	bash setup.sh

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"
