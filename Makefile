# Two commands: `make setup` (creates .venv with everything, offline models included), `make test`.
PY := .venv/bin/python

.PHONY: setup test test-fast
setup:
	bash setup.sh

# Two pytest processes: 8 fake devices for most tests, one device for those marked one_device
# (see tests/conftest.py); both run (unless the first was interrupted: exit 2), and either
# failing fails the target. $(1): more of the -m expression, for both.
define pytest_twice
$(PY) -m pytest -q -m "not one_device$(1)"; a=$$?; [ $$a -ne 2 ] || exit 2; \
COTJAX_TEST_DEVICES=1 $(PY) -m pytest -q -m "one_device$(1)"; b=$$?; \
[ $$a -eq 0 ] && [ $$b -eq 0 ]
endef

test:
	$(call pytest_twice,)

test-fast:
	$(call pytest_twice, and not slow)
