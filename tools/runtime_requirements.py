"""Print the requirements of pyproject.toml's extras (default: runtime and video), one per line.

pip cannot install a package's extras without its base dependencies (torch, for the exporter); a deployment
box that runs engine directories installs the package itself with ``--no-deps`` and these requirements:

    pip install --no-deps . && pip install $(python tools/runtime_requirements.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    return sorted({requirement for extra in extras for requirement in optional[extra]})


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:] or ["runtime", "video"])))
