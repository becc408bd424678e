# Shared by scripts/test and scripts/run-local (sourced, not run): make .venv,
# install the project into it with one line of output per step, and check that
# the installed environment imports cleanly.
#
# Each step's full output goes to a log file under $VENV/setup-logs; on
# failure the step's log is printed whole, so every error is still shown.

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SETUP_LOGS="$VENV/setup-logs"

# autobahn's serialization extra builds bjdata from source; its C extension
# can end up compiled against a different numpy than the one installed, and
# then every import of autobahn's serializers prints a NumPy ABI traceback.
# The pure-Python build has no such problem.
export PYBJDATA_NO_EXTENSION=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

# step NAME COMMAND...: run COMMAND with its output in a log; print one line.
step() {
    local name=$1; shift
    local log
    mkdir -p "$SETUP_LOGS"
    log="$SETUP_LOGS/$(echo "$name" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-').log"
    printf '== %s ... ' "$name"
    local start=$SECONDS
    if "$@" >"$log" 2>&1; then
        echo "ok ($((SECONDS - start)) s)"
    else
        local status=$?
        echo "FAILED (exit $status)"
        echo "---- output of: $* ----" >&2
        cat "$log" >&2
        echo "---- end of output (also in $log) ----" >&2
        return "$status"
    fi
}

# The serializers OCS uses must import without printing anything: a bjdata
# wheel with a C extension built against another numpy (for example one
# reused from pip's cache) prints a traceback on every import.
serializers_clean() {
    local out
    out=$("$VENV/bin/python" -c "import autobahn.wamp.serializer, ocs.ocs_client" 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
}

check_serializers() {
    mkdir -p "$SETUP_LOGS"
    if ! serializers_clean >"$SETUP_LOGS/serializers.log" 2>&1; then
        step "rebuilding bjdata without its C extension (the installed one prints errors)" \
            "$VENV/bin/python" -m pip install --no-cache-dir --force-reinstall --no-deps --no-binary bjdata bjdata
        if ! serializers_clean >"$SETUP_LOGS/serializers.log" 2>&1; then
            echo "error: autobahn's serializers still print errors on import:" >&2
            cat "$SETUP_LOGS/serializers.log" >&2
            return 1
        fi
    fi
    echo "== autobahn serializers import cleanly"
}

# setup_venv EXTRAS: create .venv if needed and install the project with EXTRAS.
setup_venv() {
    local extras=$1
    if [ ! -x "$VENV/bin/python" ]; then
        step "creating $VENV" "$PYTHON" -m venv "$VENV"
    fi
    step "upgrading pip" "$VENV/bin/python" -m pip install --upgrade pip
    step "installing socs_tcp[$extras] and its dependencies" "$VENV/bin/python" -m pip install -e ".[$extras]"
    check_serializers
}
