# The two commands of the README: `make run` and `make test`.
# Both set the machine up first (scripts/bootstrap.sh, idempotent, root).

PYTEST_ARGS ?=

.PHONY: run test test-kernel setup bench deb

setup:
	@sh scripts/bootstrap.sh

# The daemon in the foreground with the shipped default policies; events on stdout.
run: setup
	.venv/bin/tetrad run --export-stdout --tracing-policy-dir=etc/tetrad/policies

# The whole suite is the host's tests, then the kernel lane; a part (PYTEST_ARGS) is host only.
test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(MAKE) --no-print-directory test-kernel)

# The kernel-dependent tests inside Debian's distro kernel (kprobes, fentry, BPF LSM) under
# qemu: scripts/kernel-lane/run.py.  The guest image is cached in /var/cache/tetrad-test/kernel-lane.
test-kernel:
	@sh scripts/bootstrap.sh --kernel-lane
	/usr/bin/python3 scripts/kernel-lane/run.py

bench: setup
	.venv/bin/python benchmarks/exec_storm.py

# dist/tetrad_<version>_all.deb (debhelper + dh-python), checked by lintian.
deb:
	sh scripts/build-deb.sh
