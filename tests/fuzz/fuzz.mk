# Fuzz targets and the soak test, included by the Makefile.
#
#   make fuzz [FUZZ_SECONDS=N]   build the libFuzzer targets into build/fuzz
#                                and run each for N seconds (default 60)
#   make soak [SOAK_SECONDS=N]   drive chaotic load through the gateway of
#            [SOAK_WARMUP=S]     this build for N seconds (default 300), the
#                                first S of them warm-up (default N/6)
#
# The fuzz targets need clang with libFuzzer (Debian: clang-14 and
# libclang-rt-14-dev). They build the gateway and library sources again,
# instrumented for coverage with AddressSanitizer and UBSan, into build/fuzz,
# whatever SANITIZER says. `make soak SANITIZER=address` soaks the ASan build.

FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 300

FUZZ_B := build/fuzz
FUZZ_CC ?= clang
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 $(WARNINGS) $(FUZZ_SAN) \
	-fsanitize=fuzzer-no-link -Ilib/include -Igateway -MMD -MP
FUZZ_TARGETS := fuzz_config fuzz_request
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_B)/%)
FUZZ_CORE_OBJS := $(GW_SRCS:%.c=$(FUZZ_B)/obj/%.o) \
	$(LIB_SRCS:%.c=$(FUZZ_B)/obj/%.o)

SOAK_LOAD := $(B)/soak/soak-load

.PHONY: fuzz fuzz-build soak soak-build

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@tests/fuzz/run-fuzz.sh --build $(FUZZ_B) --seconds $(FUZZ_SECONDS)

$(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(FUZZ_BINS): $(FUZZ_B)/%: $(FUZZ_B)/obj/tests/fuzz/%.o $(FUZZ_CORE_OBJS)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS) \
	  -lpthread -lm

soak-build: all $(SOAK_LOAD)

soak: soak-build
	@tests/soak/soak.sh --build $(B) --seconds $(SOAK_SECONDS) \
	  $(if $(SOAK_WARMUP),--warmup $(SOAK_WARMUP))

$(SOAK_LOAD): $(B)/obj/tests/soak/soak_load.o
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(shell pkg-config --libs libcurl 2>/dev/null)

-include $(shell find $(FUZZ_B)/obj -name '*.d' 2>/dev/null)
