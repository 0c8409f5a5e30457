# Sourced by scripts/demo and scripts/test: make sure .venv exists and has the project in it.
# Re-installs only when pyproject.toml changed since the last install.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.hermes-installed"
if [[ ! -x "$venv/bin/python" ]]; then
  # the first candidate that really runs and is >= 3.11 (a pyenv shim may exist and not run)
  py=""
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      py="$candidate"
      break
    fi
  done
  [[ -n "$py" ]] || { echo "Python >= 3.11 is needed (set PYTHON=/path/to/python3.11+)" >&2; exit 1; }
  "$py" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$root/pyproject.toml" -nt "$stamp" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]"
  touch "$stamp"
fi
PY="$venv/bin/python"
