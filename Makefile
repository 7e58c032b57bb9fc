# The two commands of the README do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: demo test lint typecheck unit bench campaign sanitize linux-guest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py $(shell find src -name "*.c" -o -name "*.h") | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ipsec-offload run --out $(OUT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q -n 2 --dist loadgroup

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/ipsec-offload bench

# The Linux peer's guest (docs/linux-peer.md): build its image from Debian's packages (cached;
# rebuilt when the kernel package or an input changes) and boot it once. Needs QEMU and a static
# busybox: apt-get install --no-install-recommends qemu-system-x86 busybox-static.
linux-guest: $(VENV)/.installed
	$(BIN)/ipsec-offload linux-guest build --boot

# The 100,000-step fault campaign (spec section 9; tests/test_fault_campaign.py), minutes long.
campaign: $(VENV)/.installed-test
	$(BIN)/pytest -m slow -n 2 -rP tests/test_fault_campaign.py

# The compiled paths under AddressSanitizer and UndefinedBehaviorSanitizer: the C extensions
# built with the sanitizers into a venv of their own (the normal .venv is not touched: the
# package is installed there from a copy of the sources, not in place; -fno-wrapv undoes the
# -fwrapv of Python's own flags, so that UBSan checks signed overflow too), then the fast-path and
# differential tests and a bounded fuzz of every compiled path (agent Tx/Rx and its SAD table,
# host receive, NIC Tx and receive filter, frame builder, checksum, live packet I/O), the Python interpreter
# uninstrumented with the sanitizers' runtimes preloaded. PYTHONMALLOC=malloc gives each Python
# object its own malloc block, so that a read past a bytes object's end is seen (Python's small
# object allocator would hide it in its pools). Any sanitizer report ends the process with a
# non-zero status, which fails the tests and the job. About 3 minutes on 2 cores (the venv's
# first set-up adds one or two); CI runs it after `make test` (.ci/run). SANITIZE_EXAMPLES sets
# the fuzz tests' examples, SANITIZE_TESTS, SANITIZE_SELECT and SANITIZE_ARGS what runs.
ASAN_VENV  := .venv-asan
ASAN_BIN   := $(ASAN_VENV)/bin
ASAN_STAGE := $(ASAN_VENV)/stage
SANITIZERS := -fsanitize=address,undefined
# the fast-path and differential tests, the fuzz of each compiled path (test_*_fast_path.py,
# test_agent_fuzz.py, test_agent_sad.py, test_wire_frames.py, test_wire_ip.py, test_pktio.py:
# the live mode's batched packet I/O), and the agent,
# TSO and end-to-end tests that run the compiled paths both ways (tshark's are left out: the
# preloaded runtimes would run in tshark too)
SANITIZE_TESTS := tests/test_agent_fast_path.py tests/test_agent_fuzz.py tests/test_agent_sad.py \
	tests/test_agent_rx.py tests/test_agent_tx.py tests/test_agent_events.py \
	tests/test_agent_hairpin.py tests/test_agent_lifecycle.py tests/test_host_fast_path.py \
	tests/test_host_send_burst.py tests/test_nic_fast_path.py tests/test_wire_frames.py \
	tests/test_wire_ip.py tests/test_tso.py tests/test_tso_e2e.py tests/test_end_to_end.py \
	tests/test_expiry.py tests/test_integrity.py tests/test_compiled_robustness.py \
	tests/test_pktio.py
SANITIZE_SELECT ?= not tshark
SANITIZE_EXAMPLES ?= 1000

ASAN_LOG   := $(ASAN_VENV)/sanitize.log
SANITIZER_REPORT := ERROR: AddressSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer
ASAN_ENV = env LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONMALLOC=malloc

$(ASAN_BIN)/python:
	$(PYTHON) -m venv $(ASAN_VENV)
	$(ASAN_BIN)/pip install -q --upgrade pip

ASAN_SOURCES := Makefile pyproject.toml setup.py README.md \
	$(shell find src -name "*.py" -o -name "*.pyi" -o -name "*.c" -o -name "*.h")

$(ASAN_VENV)/.installed: $(ASAN_SOURCES) | $(ASAN_BIN)/python
	rm -rf $(ASAN_STAGE) && mkdir -p $(ASAN_STAGE)
	tar -cf - --exclude='*.so' --exclude=__pycache__ pyproject.toml setup.py README.md src \
		| tar -xf - -C $(ASAN_STAGE)
	CFLAGS="$(SANITIZERS) -fno-wrapv -fno-omit-frame-pointer -O1 -g" LDFLAGS="$(SANITIZERS)" \
		$(ASAN_BIN)/pip install -q "./$(ASAN_STAGE)[test]"
	cd $(ASAN_VENV) && $(ASAN_ENV) bin/python -c "import importlib, pathlib; \
		names = 'agent._datapath host._rxpath nic._nicpath wire._frames wire._checksum'; \
		files = [importlib.import_module('ipsec_offload.' + n).__file__ for n in names.split()]; \
		bare = [f for f in files if b'__asan_init' not in pathlib.Path(f).read_bytes()]; \
		assert not bare, f'built without the sanitizers: {bare}'"
	touch $@

# The tests capture Python's sys.stderr only (--capture=sys), so that a report the sanitizers
# write to a test worker's stderr reaches the log (a child interpreter's is in its test's
# failure); a report fails the job even where no test failed (one written as a worker exits).
sanitize: $(ASAN_VENV)/.installed
	{ $(ASAN_ENV) HYPOTHESIS_PROFILE=sanitize FAST_PATH_EXAMPLES=$(SANITIZE_EXAMPLES) \
		IPSEC_OFFLOAD_REQUIRE_TOOLS=1 \
		$(ASAN_BIN)/python -m pytest -q -n 2 -p no:cacheprovider --capture=sys \
		-k "$(SANITIZE_SELECT)" $(SANITIZE_ARGS) $(SANITIZE_TESTS) 2>&1; \
		echo $$? > $(ASAN_LOG).status; } | tee $(ASAN_LOG)
	@status=$$(cat $(ASAN_LOG).status); \
	if grep -qE "$(SANITIZER_REPORT)" $(ASAN_LOG); then \
		echo "make sanitize: a sanitizer reported an error (see above)"; status=1; \
	fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(ASAN_VENV) $(OUT) bench.json .mypy_cache .pytest_cache .ruff_cache build
	rm -f src/ipsec_offload/*/*.so
