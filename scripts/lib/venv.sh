# Sourced by scripts/run and scripts/test (not run on its own): go to the repo root, make
# sure .venv exists (Python 3.11) with requirements.txt installed, and put .venv first on
# PATH as if activated. Works from any directory and on a fresh clone.
# shellcheck shell=bash

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

ensure_venv() {
    if [[ ! -x .venv/bin/python ]]; then
        local py
        py="$(command -v python3.11 || command -v python3 || true)"
        [[ -n "$py" ]] || { echo "scripts: Python 3.11 is needed (python3.11 not found)" >&2; exit 1; }
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "scripts: $py is older than 3.11" >&2; exit 1; }
        echo "scripts: creating .venv with $py" >&2
        "$py" -m venv .venv
    fi
    # Install requirements.txt when it changed since the last install.
    if [[ -f requirements.txt ]]; then
        local stamp=.venv/.requirements.sha256 sum
        sum="$(sha256sum requirements.txt | cut -d' ' -f1)"
        if [[ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]]; then
            echo "scripts: installing requirements.txt into .venv" >&2
            .venv/bin/python -m pip install --quiet --upgrade pip
            .venv/bin/python -m pip install --quiet -r requirements.txt
            echo "$sum" > "$stamp"
        fi
    else
        echo "scripts: no requirements.txt; using .venv as it is" >&2
    fi
}

ensure_venv
# As if activated: programs run by name (flask, rq, gunicorn) come from .venv.
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
