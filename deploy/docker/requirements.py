"""Print the serving requirements from pyproject.toml, for the Dockerfile's dependency layers.

    python requirements.py torch [TORCH_VERSION TORCHVISION_VERSION]   # torch, torchvision
    python requirements.py rest                                         # everything else

Only ``[project] dependencies`` (no dev or train extras). ``torch`` prints pyproject's pins,
or the two versions given (both, or neither), so a CPU-only build can pick another release.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH_PACKAGES = ("torch", "torchvision")


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def split(pyproject: Path) -> tuple[list[str], list[str]]:
    """(torch requirements, the other requirements) of the project's runtime dependencies."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    torch = [d for d in deps if requirement_name(d) in TORCH_PACKAGES]
    rest = [d for d in deps if requirement_name(d) not in TORCH_PACKAGES]
    if sorted(requirement_name(d) for d in torch) != sorted(TORCH_PACKAGES):
        raise ValueError(f"pyproject.toml must list {' and '.join(TORCH_PACKAGES)}")
    return torch, rest


def main(argv: list[str]) -> int:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    torch, rest = split(pyproject)
    if argv[:1] == ["rest"] and len(argv) == 1:
        print("\n".join(rest))
    elif argv[:1] == ["torch"] and len(argv) in (1, 3):
        versions = [v for v in argv[1:] if v]
        if len(versions) == 2:
            torch = [
                f"{name}=={version}" for name, version in zip(TORCH_PACKAGES, versions, strict=True)
            ]
        elif versions:
            print("error: give both TORCH_VERSION and TORCHVISION_VERSION, or neither",
                  file=sys.stderr)  # fmt: skip
            return 2
        print("\n".join(torch))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
