# hybridinfer: `make demo` installs and generates with the default model; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/hybridinfer

.PHONY: install install-test demo test test-targets eval bench bench-model model reference-model gpu-check fuzz clean

# the runtime (what `make demo` needs); install-test adds the test tools, Triton (its kernels run on the CPU in
# the tests), matplotlib (the --plot options) and lm-eval (the eval extra, which tests/test_lm_eval.py runs)
install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# pip byte-compiles what it installs on one core; compileall on all of them is twice as fast here (its exit status is
# ignored, as pip ignores files that do not compile: test fixtures of some packages)
COMPILE := $(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
	> /dev/null 2>&1 || true

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-compile -e '.[test,eval]'
	$(COMPILE)
	touch $@

model: install
	$(CLI) fetch

TINY_HYBRID := -m models/prosparse-tiny.q8_0.gguf --predictors models/prosparse-tiny.pred.gguf --vram-budget 69MiB \
	--activations models/prosparse-tiny.act.gguf

# the second run's kernels compile in the background while the first run compiles its own (two cores, one each)
demo: model
	$(CLI) warmup $(TINY_HYBRID) 2> $(VENV)/warmup.log & \
	$(CLI) generate -p "The three primary colors are" -n 48 --temp 0; status=$$?; \
	wait $$! || { cat $(VENV)/warmup.log; exit 1; }; exit $$status
	@echo "--- the sparse reference model (ProSparse recipe, ~94% of FFN neurons silent) with its predictors:"
	$(CLI) generate $(TINY_HYBRID) -p "Return the number of" -n 48 --temp 0

# the tests in TEST_WORKERS processes, a file to each at a time (numba compiles in each; its cache writes are locked)
TEST_WORKERS ?= 2
test: model install-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# the kernels' twin tests again, compiled for a desktop CPU without AVX-512 (AVX2) and for any LLVM target (generic,
# as on ARM): HYBRIDINFER_CPU picks the instruction set (docs/cpu-decoding.md)
KERNEL_TESTS = tests/test_cpu_quant.py tests/test_requantize.py tests/test_cpu_layer.py
test-targets: model install-test
	HYBRIDINFER_CPU=avx2 $(PY) -m pytest -q -n $(TEST_WORKERS) $(KERNEL_TESTS)
	HYBRIDINFER_CPU=generic $(PY) -m pytest -q -n $(TEST_WORKERS) $(KERNEL_TESTS)

# lm-eval's local-completions against `hybridinfer serve` on a local multiple-choice task: accuracy dense, CATS 40%
# and TEAL 40% side by side (docs/evaluation.md; EVAL_ARGS passes options, e.g. "-m model.gguf --modes dense")
eval: model install-test
	PYTHONPATH=. $(PY) tools/lm_eval_recipe.py $(EVAL_ARGS)

bench: model install-test
	PYTHONPATH=. $(PY) tools/bench.py

# The CLI on MUTANTS mutated model files (SmolLM2 and the reference model): a table of outcomes (tools/fuzz.py)
MUTANTS ?= 10000
fuzz: model install-test
	PYTHONPATH=. $(PY) tools/fuzz.py --mutants $(MUTANTS)

# The 7B-shaped synthetic ProSparse model (Q4_0) and its predictors for `make bench` (docs/synthetic-7b.md)
bench-model: install
	PYTHONPATH=. $(PY) tools/build_bench_model.py

# The ProSparse-recipe reference model, rebuilt from scratch (docs/prosparse-recipe.md gives the measured time)
reference-model: install
	PYTHONPATH=. $(PY) -m tools.prosparse.build_reference --out models/prosparse-tiny

# On an NVIDIA machine, with its own python3, torch, Triton and numba (installs nothing: gguf, if missing, comes
# as a carried wheel on PYTHONPATH; docs/hybrid.md)
gpu-check:
	PYTHONPATH=.:$(PYTHONPATH) $(PYTHON) tools/gpu_check.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
