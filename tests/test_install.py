"""The environment ``make`` installs is the one ``constraints.txt`` pins, and the pins keep within
pyproject.toml's ranges: a dependency changed in one file and not the other fails here, before a
newcomer's fresh clone installs something nobody tested."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = Path(__file__).resolve().parent.parent


def pins(text: str) -> dict[str, Version]:
    """``name==version`` a line, comments and blank lines skipped, names as pip compares them."""
    pinned = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pinned[canonicalize_name(name)] = Version(version)
    return pinned


def requirements() -> list[Requirement]:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def out_of_range(pinned: dict[str, Version], needed: list[Requirement]) -> list[str]:
    """The requirements of pyproject.toml that no pin satisfies, each as a sentence."""
    wrong = []
    for requirement in needed:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            wrong.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement.name}=={version} is outside pyproject.toml's {requirement.specifier}")
    return wrong


def test_every_dependency_is_pinned_within_pyprojects_range():
    pinned = pins((PROJECT / "constraints.txt").read_text())
    assert out_of_range(pinned, requirements()) == []
    # the check finds a dependency bumped in pyproject.toml only, and one added there only
    bumped = {**pinned, "torch": Version("2.12.0")}
    assert out_of_range(bumped, requirements()) == ["torch==2.12.0 is outside pyproject.toml's ==2.13.0"]
    assert out_of_range(pinned, [Requirement("no-such-package>=1")]) == ["no-such-package is not pinned"]


def not_installed_as_pinned(pinned: dict[str, Version]) -> list[str]:
    """The pins this environment differs from (torch's local label aside: +cpu here, the CUDA
    build in the GPU image)."""
    differ = []
    for name, version in pinned.items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            differ.append(f"{name} is not installed")
            continue
        if Version(installed.public) != version:
            differ.append(f"{name} {installed} is installed, {version} pinned")
    return differ


def test_this_environment_is_the_pinned_one():
    pinned = pins((PROJECT / "constraints.txt").read_text())
    assert not_installed_as_pinned(pinned) == [], "run `make install` (or `make constraints` after pyproject.toml)"
    ray = importlib.metadata.version("ray")
    assert not_installed_as_pinned({"ray": Version("2.59.0"), "no-such-package": Version("1.0")}) == [
        f"ray {ray} is installed, 2.59.0 pinned",
        "no-such-package is not installed",
    ]
