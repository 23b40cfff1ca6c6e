# Workshop Gateway build.
#
#   make            build build/workshop-gateway and build/libworkshop.a
#   make deps       install missing Debian packages (needs root)
#   make run        start a demo upstream and the gateway on config/gateway.json
#   make test       every test: unit, integration, sanitizers, valgrind, clang
#   make bench      library benchmarks
#   make install    headers, libworkshop.a and libworkshop.pc into DESTDIR/PREFIX
#
# SANITIZER=address builds with AddressSanitizer and UBSan into build/asan,
# SANITIZER=thread with ThreadSanitizer into build/tsan.

CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0
PKGS := libmicrohttpd libcurl libcjson
SANITIZER ?=

ifeq ($(SANITIZER),address)
B ?= build/asan
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
else ifeq ($(SANITIZER),thread)
B ?= build/tsan
SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
else ifeq ($(SANITIZER),)
B ?= build
SAN_FLAGS :=
else
$(error SANITIZER must be address, thread or empty, not '$(SANITIZER)')
endif

WARNINGS := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wformat=2 \
	-Wstrict-prototypes -Wmissing-prototypes -Wundef -Wvla \
	-Wimplicit-fallthrough -Wwrite-strings -Wold-style-definition \
	-Wnull-dereference -Wdouble-promotion
OPT ?= -O2
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARNINGS) $(SAN_FLAGS) \
	-Ilib/include -Igateway -MMD -MP $(CFLAGS)
LDFLAGS_ALL := $(SAN_FLAGS) $(LDFLAGS)

# pkg-config runs only for targets that compile; `make deps` must work
# before the -dev packages exist.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS = $(shell pkg-config --libs cmocka 2>/dev/null)

LIB_SRCS := $(sort $(wildcard lib/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/obj/%.o)
GW_SRCS := $(filter-out gateway/main.c,$(sort $(wildcard gateway/*.c)))
GW_OBJS := $(GW_SRCS:%.c=$(B)/obj/%.o)
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)
ITEST_SRCS := $(sort $(wildcard tests/integration/itest_*.c))
ITEST_BINS := $(ITEST_SRCS:tests/integration/%.c=$(B)/tests/%)
HARNESS_SRCS := $(filter-out $(ITEST_SRCS),$(sort $(wildcard tests/integration/*.c)))
HARNESS_OBJS := $(HARNESS_SRCS:%.c=$(B)/obj/%.o)
UPSTREAM_SRCS := $(sort $(wildcard tests/upstream/*.c))
UPSTREAM_OBJS := $(UPSTREAM_SRCS:%.c=$(B)/obj/%.o)
EXAMPLE_SRCS := $(sort $(wildcard lib/examples/*.c))
EXAMPLE_BINS := $(EXAMPLE_SRCS:lib/examples/%.c=$(B)/examples/%)
BENCH_SRCS := $(sort $(wildcard tests/bench/bench_*.c))
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(B)/bench/%)

GATEWAY := $(B)/workshop-gateway
LIBRARY := $(B)/libworkshop.a
GW_CORE := $(B)/libgateway.a
TEST_UPSTREAM := $(B)/test-upstream

.PHONY: all deps deps-run run test test-unit test-integration test-examples \
	tests test-clang bench install clean format lint \
	check-banned
.DEFAULT_GOAL := all
# Keep object files of pattern rules, so a rebuild only compiles what changed.
.SECONDARY:

all: $(GATEWAY) $(LIBRARY) $(B)/libworkshop.pc $(TEST_UPSTREAM) \
	$(EXAMPLE_BINS)

$(B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) $(PKG_CFLAGS) -c $< -o $@

$(LIBRARY): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(GW_CORE): $(GW_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(GATEWAY): $(B)/obj/gateway/main.o $(GW_CORE) $(LIBRARY)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lpthread -lm

$(TEST_UPSTREAM): $(UPSTREAM_OBJS)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -lpthread

$(B)/tests/test_%: $(B)/obj/tests/unit/test_%.o $(GW_CORE) $(LIBRARY)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) $(CMOCKA_LIBS) -lpthread -lm

$(B)/tests/itest_%: $(B)/obj/tests/integration/itest_%.o $(HARNESS_OBJS) \
		$(GW_CORE) $(LIBRARY)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) $(CMOCKA_LIBS) -lpthread -lm

$(B)/examples/%: $(B)/obj/lib/examples/%.o $(LIBRARY)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -lpthread -lm

$(B)/bench/%: $(B)/obj/tests/bench/%.o $(GW_CORE) $(LIBRARY)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lpthread -lm

$(B)/libworkshop.pc: lib/libworkshop.pc.in Makefile
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# --- dependencies --------------------------------------------------------

# Debian packages the build and `make run` need, then those only the tests
# need (clang and sanitizer runtimes, valgrind, nginx and Prometheus as test
# peers).
RUN_PKGS := gcc make pkg-config libmicrohttpd-dev libcurl4-openssl-dev \
	libcjson-dev curl
TEST_PKGS := $(RUN_PKGS) clang libcmocka-dev valgrind prometheus nginx-light \
	libclang-rt-14-dev python3

# Installs the packages of $(1) that are missing (apt-get, as root).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "deps: installing$$missing"; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "deps: missing packages:$$missing; run 'make deps' as root" >&2; \
	  exit 1; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	  $$missing >/dev/null
endef

deps:
	$(call install_missing,$(TEST_PKGS))

deps-run:
	$(call install_missing,$(RUN_PKGS))

# --- running -------------------------------------------------------------

run: deps-run
	@$(MAKE) --no-print-directory all
	@tests/run-demo.sh $(B)

# --- tests ---------------------------------------------------------------

test: deps
	@$(MAKE) --no-print-directory check-banned
	@$(MAKE) --no-print-directory tests
	@tests/run-tests.sh --build $(B) --all

# Every test binary of this build, without running them.
tests: all $(UNIT_BINS) $(ITEST_BINS)

test-unit: $(UNIT_BINS)
	@tests/run-tests.sh --build $(B) --unit

test-integration: all $(ITEST_BINS)
	@tests/run-tests.sh --build $(B) --integration

test-examples: $(EXAMPLE_BINS)
	@tests/run-tests.sh --build $(B) --examples

# Builds everything with clang into build/clang so its warnings count too.
test-clang:
	@$(MAKE) --no-print-directory CC=clang B=build/clang all \
	  $(UNIT_SRCS:tests/unit/%.c=build/clang/tests/%) \
	  $(ITEST_SRCS:tests/integration/%.c=build/clang/tests/%)

# Rejects functions that are easy to misuse with untrusted input.
check-banned:
	@if grep -nE '\b(sprintf|vsprintf|strcpy|strcat|strtok|gets|atoi|atol)\s*\(' \
	    lib/*.c lib/include/workshop/*.h gateway/*.c gateway/*.h \
	    tests/upstream/*.c 2>/dev/null; then \
	  echo "check-banned: use snprintf, memcpy with a length, strtok_r or strtol" >&2; \
	  exit 1; \
	fi

bench: $(BENCH_BINS)
	@for b in $(BENCH_BINS); do echo "== $$b"; $$b || exit 1; done

# --- installing ----------------------------------------------------------

# The .pc file is written here, not taken from the build, so it names the
# PREFIX given to this command.
install: $(LIBRARY)
	install -d $(DESTDIR)$(PREFIX)/include/workshop $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 0644 lib/include/workshop/*.h $(DESTDIR)$(PREFIX)/include/workshop/
	install -m 0644 $(LIBRARY) $(DESTDIR)$(PREFIX)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	  lib/libworkshop.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libworkshop.pc
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/pkgconfig/libworkshop.pc

format:
	clang-format -i lib/*.c lib/include/workshop/*.h lib/examples/*.c \
	  gateway/*.c gateway/*.h tests/*/*.c tests/*/*.h

clean:
	rm -rf build

-include tests/bench/bench.mk
-include tests/fuzz/fuzz.mk
-include docker/container.mk
-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
