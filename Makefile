# The two commands of the README: `make run` and `make test`.
# Both set the machine up first (scripts/bootstrap.sh, idempotent, root).

PYTEST_ARGS ?=

.PHONY: run test setup bench deb

setup:
	@sh scripts/bootstrap.sh

# The daemon in the foreground with the shipped default policies; events on stdout.
run: setup
	.venv/bin/tetrad run --export-stdout --tracing-policy-dir=etc/tetrad/policies

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	.venv/bin/python benchmarks/exec_storm.py

# dist/tetrad_<version>_all.deb (debhelper + dh-python), checked by lintian.
deb:
	sh scripts/build-deb.sh
