#!/usr/bin/env bash
# Run the loading tests under datasets 3.6, the last release line that still runs loading scripts, so the seed's
# load_dataset("<out>/tglc.py", ..., trust_remote_code=True) path is checked against load_tglc.
#     .ci/datasets3.sh [VENV_DIR]      (default: .venv-ds3 in the repository; reused when it exists)
# Set PYTHON to choose the interpreter that creates the venv (default python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo}/.venv-ds3}"

if [ ! -x "${venv}/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "${venv}"
fi
# The project itself (editable, with its dependencies, so conftest.py imports) pinned to datasets 3.6.
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "datasets==3.6.0" "pytest>=7.4" -e "${repo}"

cd "${repo}"
"${venv}/bin/python" -c 'import datasets; assert datasets.__version__ == "3.6.0", datasets.__version__'
exec "${venv}/bin/python" -m pytest tests/test_loading.py -q -p no:cacheprovider
