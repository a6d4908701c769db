#!/usr/bin/env bash
# Runs benches/peers/dbos_three_steps.py (the DBOS Transact for Python peer)
# in a virtualenv with a pinned dbos, creating it on first use. Arguments go
# to the script; see its docstring. Used by `cargo bench -p benches --bench
# throughput`; needs python3 (with venv) and PyPI.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# Under the cargo target dir by default: build output, never committed.
venv="${DBOS_VENV:-$here/../../target/peers/dbos-venv}"
version="3.4.0"

if ! "$venv/bin/pip" show dbos 2>/dev/null | grep -qx "Version: $version"; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "dbos==$version" >&2
fi
exec "$venv/bin/python" "$here/dbos_three_steps.py" "$@"
