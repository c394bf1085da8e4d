# dlq: PGXS build of the dead-letter queue extension.
#
#   make && make install     build and install into the server found by pg_config
#   make installcheck        pg_regress, isolation specs and TAP tests against
#                            throwaway instances that preload the library
#   make demo / make test    the two commands README.md opens with
#   make bench               benchmarks against baselines in the same run
#   make deb                 the Debian package postgresql-15-dlq, in dist/

EXTENSION = dlq
# The version comes from dlq.control alone.
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = dlq
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The contrib way: the install script of 1.0, frozen as released, and one
# upgrade script per version step.  CREATE EXTENSION dlq runs 1.0 and then the
# chain up to $(EXTVERSION); never edit a released script.
DATA = dlq--1.0.sql $(sort $(wildcard dlq--*--*.sql))

PG_CONFIG ?= pg_config
# Warnings are bugs.  -Wno-unused-parameter only because PostgreSQL's own
# headers (bufpage.h, ilist.h) trip it under -Wextra.
PG_CPPFLAGS += -Isrc -DDLQ_EXTVERSION='"$(EXTVERSION)"' -Wall -Wextra -Werror -Wno-unused-parameter \
	-Wno-sign-compare -Wno-missing-field-initializers

REGRESS = $(basename $(notdir $(sort $(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-instance=./tmp_check_regress --temp-config=tests/dlq_test.conf \
	--load-extension=dlq
ISOLATION = $(basename $(notdir $(sort $(wildcard tests/isolation/specs/*.spec))))
ISOLATION_OPTS = --temp-instance=./tmp_check_iso --temp-config=tests/dlq_test.conf \
	--inputdir=tests/isolation --outputdir=output_iso --load-extension=dlq
TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard tests/t/*.pl))
PROVE_FLAGS = -I tests/t

EXTRA_CLEAN = tmp_check_regress tmp_check_iso output_iso tmp_demo tmp_bench dist

# Bitcode for JIT inlining is not worth a clang dependency.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every object depends on the module headers (PGXS tracks no header
# dependencies unless PostgreSQL was configured with --enable-depend).
$(OBJS): $(wildcard src/*.h)

.PHONY: demo test bench deb
demo:
	bash scripts/demo.sh
test:
	bash .ci/run
bench:
	bash tests/bench/run.sh
deb:
	bash scripts/deb.sh
