# Entry points used by the README. Each target installs what is missing first.
BUILD    ?= build
JOBS     ?= $(shell nproc)
DATA     ?= /usr/share/datasets/fashion-mnist
EPOCHS   ?= 5
RUN_ARGS ?=
# ccache keys on paths relative to the checkout, so other clones reuse its objects.
export CCACHE_BASEDIR ?= $(CURDIR)
SECONDS  ?= 60
TARGETS  ?=

.PHONY: deps build run test test-numerics test-sanitize bench bench-serve soak-serve fuzz format check-format check-layers clean

deps:
	@scripts/install-deps

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# Trains the seed configuration (small-cnn, 2x2 patches of 18, input 32, mean
# fusion, patch loss) on Fashion-MNIST and evaluates it.
run: build
	$(BUILD)/patchwise train --data $(DATA) --model small-cnn --grid 2x2 --patch 18 \
	  --input 32 --epochs $(EPOCHS) --out $(BUILD)/fashion.pw $(RUN_ARGS)
	$(BUILD)/patchwise eval --model $(BUILD)/fashion.pw --data $(DATA)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Every test labelled numerics rerun with oneDNN, ATen and OpenBLAS held to other
# instruction sets and kernels and other thread counts (docs/testing.md).
test-numerics: build
	scripts/test-numerics $(BUILD)

# The test suite built with AddressSanitizer and UndefinedBehaviorSanitizer; any
# report fails its test. Leaks inside the libraries below (LibTorch, OpenBLAS,
# OpenCV's codecs) are suppressed by tests/sanitizer/lsan.supp, ours are not.
# -O1 -g1 (line tables: reports still name file and line) compiles in half the time of
# -O2 -g, whose debug information for LibTorch's templates makes 17 MB objects.
# UBSan's null, alignment and vptr checks go on every pointer use and virtual call of
# every LibTorch template a file inlines: in src/train/trainer.cpp they are 14 s of the
# 23 s the sanitizers add to its code generation (13 s parsing, 8 s at -O3). A null
# dereference is still reported (ASan's SEGV, with its stack), x86 does not fault on
# a misaligned read, and the readers of binary formats copy bytes out (memcpy).
SANITIZE_ENV = ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:check_initialization_order=1 \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizer/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
test-sanitize: deps
	cmake -S . -B $(BUILD)-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
	  -DPATCHWISE_SANITIZE=address,undefined -DPATCHWISE_NO_SANITIZE=vptr,alignment,null \
	  -DPATCHWISE_BUILD_BENCH=OFF
	cmake --build $(BUILD)-sanitize -j $(JOBS)
	cd $(BUILD)-sanitize && $(SANITIZE_ENV) ctest --output-on-failure -j $(JOBS)

# patchwise and its PyTorch peer (bench/peer.py) on the same jobs, alternately.
REPS ?= 3
bench: build
	@scripts/install-deps bench
	bench/run-bench --build $(BUILD) --reps $(REPS)

# patchwise serve under load (wrk) beside a Python server doing the same job, and a
# soak of mixed good and bad requests (bench/run-serve, bench/serve-soak).
bench-serve: build
	@scripts/install-deps bench
	bench/run-serve --build $(BUILD)
soak-serve: build
	bench/serve-soak --build $(BUILD)

# Every libFuzzer target (clang, ASan + UBSan) for SECONDS each.
fuzz:
	@scripts/install-deps fuzz
	CC=clang CXX=clang++ cmake -S . -B $(BUILD)-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPATCHWISE_FUZZ=ON -DPATCHWISE_SANITIZE=address,undefined \
	  -DPATCHWISE_BUILD_TESTS=OFF -DPATCHWISE_BUILD_BENCH=OFF
	cmake --build $(BUILD)-fuzz -j $(JOBS) --target fuzz_seeds idx_fuzz cifar_fuzz \
	  digits_json_fuzz image_fuzz model_file_fuzz \
	  region_fuzz manifest_fuzz request_fuzz torch_import_fuzz
	scripts/fuzz $(BUILD)-fuzz $(SECONDS) $(TARGETS)

# clang-format over every C++ file but third_party/ (CI runs check-format).
format:
	scripts/check-format --fix
check-format:
	scripts/check-format
# Every #include between the library's layers goes down (CI checks it beside the format).
check-layers:
	scripts/check-layers

clean:
	rm -rf $(BUILD) $(BUILD)-fuzz $(BUILD)-sanitize
