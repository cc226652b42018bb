#!/usr/bin/env bash
# Type check jfdeploy as it installs: kernels/ and export/ are the packages jfdeploy.kernels and jfdeploy.export
# (setuptools package-dir), so the check runs on a tree of links laid out like the installed package.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/jfdeploy"
for entry in "$repo"/jfdeploy/*; do
  case "$(basename "$entry")" in __pycache__ | kernels | export) continue ;; esac
  ln -s "$entry" "$tree/jfdeploy/"
done
ln -s "$repo/kernels" "$tree/jfdeploy/kernels"
ln -s "$repo/export" "$tree/jfdeploy/export"
cd "$tree"
mypy --config-file "$repo/pyproject.toml" -p jfdeploy
