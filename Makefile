# rsprof: one-command set-up, demo and test suite for a fresh machine.
#   make demo   set up everything, profile the bundled example, print top cpu
#   make test   set up everything, run lint, type checks and the whole test suite
#   make binary the one-file executable dist/rsprof (PyInstaller; packaging/README.md)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rsprof-installed
CARGO  ?= cargo
EXAMPLE_BIN := example/target/release/rsprof-example
TARGETS_STAMP := tests/targets/target/release/cpu_split
DEMO_DB := demo.db

.PHONY: all setup build demo test lint typecheck unit bench clean tools binary

all: setup build

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard rsprof/*.pyx rsprof/*.pxd csrc/*.h csrc/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(EXAMPLE_BIN): $(wildcard example/src/*.rs) example/Cargo.toml
	cd example && $(CARGO) build --release --offline --quiet

$(TARGETS_STAMP): $(wildcard tests/targets/src/*.rs tests/targets/src/bin/*.rs) tests/targets/Cargo.toml
	cd tests/targets && $(CARGO) build --release --offline --quiet

# The same targets without frame pointers, line tables only (a default release build;
# RUSTFLAGS replaces the force-frame-pointers of tests/targets/.cargo/config.toml).
tests/targets/target/nofp/release/two_callers: $(wildcard tests/targets/src/*.rs tests/targets/src/bin/*.rs) tests/targets/Cargo.toml
	cd tests/targets && RUSTFLAGS="-C force-frame-pointers=no" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
	  $(CARGO) build --release --offline --quiet --target-dir target/nofp

build: $(EXAMPLE_BIN) $(TARGETS_STAMP) tests/targets/target/nofp/release/two_callers

demo: setup $(EXAMPLE_BIN)
	@rm -f $(DEMO_DB)
	@$(EXAMPLE_BIN) --threads 4 --seconds 30 > /dev/null & \
	  pid=$$!; sleep 0.5; \
	  $(VENV)/bin/rsprof -p $$pid -q -d 5s -o $(DEMO_DB); status=$$?; \
	  kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; \
	  test $$status -eq 0 && $(VENV)/bin/rsprof top cpu $(DEMO_DB) -n 15

lint: setup
	$(VENV)/bin/ruff check rsprof tests bench
	$(VENV)/bin/mypy

# Programs the tests drive, as command:Debian package: tmux (the terminal tests) and
# go (`go tool pprof` reads the pprof exports, tests/integration/test_export_pprof.py);
# installed with apt-get when missing and root. Elsewhere those tests skip with a
# reason, but never in CI (CI=true).
TOOLS := tmux:tmux go:golang-go
tools:
	@for tool in $(TOOLS); do cmd=$${tool%%:*}; pkg=$${tool#*:}; \
	  command -v $$cmd >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null 2>&1)); } || true; \
	  command -v $$cmd >/dev/null || { echo "make: $$cmd ($$pkg) is missing: the tests that use it will skip"; \
	    [ "$${CI:-}" != true ] || { echo "make: CI needs $$cmd"; exit 1; }; }; \
	done

test: setup build lint tools
	cd rsprof-trace && $(CARGO) test --offline --quiet
	cd rsprof-trace && $(CARGO) test --offline --quiet --features profiling
	$(PY) -m pytest -q -ra tests

unit: setup
	$(PY) -m pytest -q tests/unit

bench: setup build
	$(PY) bench/run_all.py

# One self-contained executable (Python, the Cython modules, the shim, every dependency):
# dist/rsprof. Needs no Python on the machine it runs on (a glibc as new as this one's).
binary: setup
	@$(PY) -c 'import PyInstaller' 2>/dev/null || $(PY) -m pip install --quiet 'pyinstaller>=6.0'
	$(PY) -m PyInstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller \
	  packaging/rsprof.spec
	@ls -l dist/rsprof

clean:
	rm -rf build dist rsprof/_build_info.py $(VENV) rsprof/*.so rsprof/_ring.c rsprof/_unwind.c rsprof/_dwarf.c example/target tests/targets/target rsprof-trace/target tests/trace_app/target
