# pyxapi: `make run` serves the API on this machine; `make test` runs every test.
# Both install what is missing (a .venv, and as root the Debian packages the drivers need).
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8080
TLS_PORT ?= 8443
DATA   ?= ./var
HYPERVISOR ?= auto
COMPLETION_DIR ?= $(HOME)/.local/share/bash-completion/completions
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test lint bench deps apt-deps guest-image xe xen-host clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

apt-deps:
	@sh scripts/install-debian-deps.sh

# The "pyxapi test guest" template boots this image (built from Debian packages, cached).
guest-image:
	@images/build-test-guest $(DATA)/images/test-guest >/dev/null || echo "pyxapi: could not build the test guest image (see images/README.md)"

# The `xe` CLI: bash completion (commands, parameters, VM names...) for bash-completion to load,
# and its bytecode compiled once, as a package install would, so that it starts fast.
xe: deps
	@install -D -m 644 src/pyxapi/cli/xe-completion.bash $(COMPLETION_DIR)/xe || echo "pyxapi: could not install xe's bash completion in $(COMPLETION_DIR)"
	@$(BIN)/python -m compileall -q src/pyxapi/cli

# A real Xen host managed by pyxapi ("XCP on Debian"), under QEMU: builds the image (cached under
# var/cache/xen-host; a few minutes the first time), boots it, and forwards its XenAPI to
# 127.0.0.1:$(XEN_PORT). Xen's and dom0's consoles stay on this terminal (Ctrl-A X quits QEMU).
XEN_PORT ?= 9080
xen-host: deps apt-deps
	images/build-xen-host var/cache/xen-host
	XEN_HOST_API_PORT=$(XEN_PORT) images/xen-host/boot var/cache/xen-host

run: deps apt-deps guest-image xe
	$(BIN)/pyxapi serve --host 127.0.0.1 --port $(PORT) --tls-port $(TLS_PORT) --data-dir $(DATA) --hypervisor $(HYPERVISOR)

test: deps apt-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy

bench: deps
	$(BIN)/python bench/api.py
	$(BIN)/python bench/storage.py

clean:
	rm -rf $(VENV) var
