#!/usr/bin/env bash
# `make test`: pytest on each tested stack, "$@" passed to every pytest; says which stack runs
# which tests and which stacks were skipped and why. Both stacks run even when the first fails;
# the exit status is the first failure's.
#   VENV     megatron-core 0.16.1 (Python 3.10-3.11): every test
#   VENV312  megatron-core 0.19.2 (Python >= 3.12): every test, or, when VENV ran too, all but
#            the tests marked one_stack (nothing in them depends on megatron-core; pytest.ini)
# An empty VENV or VENV312 skips that stack, for the reason in SKIP_311 or SKIP_312 (the Makefile
# sets them when it finds no such Python); with REQUIRE_ALL_STACKS=1 (CI) a skipped stack fails.
set -euo pipefail
VENV=${VENV-.venv}
VENV312=${VENV312-.venv312}
SKIP_311=${SKIP_311:-not asked for}
SKIP_312=${SKIP_312:-not asked for}
REQUIRE_ALL_STACKS=${REQUIRE_ALL_STACKS:-}

status=0
summary=()

# run_stack NAME VENV SELECTION PYTEST_ARGS...: one stack's pytest, its result into the summary.
run_stack() {
    local name=$1 venv=$2 selection=$3 rc=0
    shift 3
    local installed
    installed=$("$venv/bin/python" -c "import importlib.metadata as m, platform
print('megatron-core', m.version('megatron-core') + ', Python', platform.python_version())")
    echo "== megatron-core $name stack ($venv: $installed): $selection"
    "$venv/bin/python" -m pytest -q "$@" || rc=$?
    # 5 is "no tests collected": every test the arguments select is one_stack and ran already.
    if [[ $rc == 5 && $selection != "every test" ]]; then
        rc=0
    fi
    if [[ $rc == 0 ]]; then
        summary+=("megatron-core $name stack: passed")
    else
        summary+=("megatron-core $name stack: FAILED (pytest exit $rc)")
        if [[ $status == 0 ]]; then
            status=$rc
        fi
    fi
}

skip() {
    local line="skipped the megatron-core $1 stack: $2"
    if [[ -n $REQUIRE_ALL_STACKS ]]; then
        line="FAILED: $line, and REQUIRE_ALL_STACKS is set"
        status=1
    fi
    echo "== $line"
    summary+=("$line")
}

if [[ -n $VENV ]]; then
    run_stack 0.16.1 "$VENV" "every test" "$@"
else
    skip 0.16.1 "$SKIP_311"
fi
if [[ -z $VENV312 ]]; then
    skip 0.19.2 "$SKIP_312"
elif [[ -n $VENV ]]; then
    run_stack 0.19.2 "$VENV312" "all but the one_stack tests (they ran on 0.16.1)" -m "not one_stack" "$@"
else
    run_stack 0.19.2 "$VENV312" "every test" "$@"
fi
printf '== %s\n' "${summary[@]}"
exit "$status"
