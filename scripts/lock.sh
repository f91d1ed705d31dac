#!/usr/bin/env bash
# Re-resolve pyproject.toml's ranges in a throwaway venv and write the result to constraints.txt.
# Run `make test` afterwards: constraints.txt is the set CI has proven, not merely the newest.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev,docs]'
{
  sed -n '/^#/p' constraints.txt
  "$venv/bin/python" -m pip list --format=freeze --exclude-editable \
    | grep -viE '^(pip|setuptools|wheel)=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
