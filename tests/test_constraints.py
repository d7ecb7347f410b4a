"""constraints.txt, the lock `make install` and CI install with, pins every package that
pyproject.toml asks for to one exact version inside pyproject's range."""

import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"constraints.txt line {number}: not NAME==VERSION"
        assert "+" not in version, f"constraints.txt line {number}: local version {version}"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt line {number}: {name} pinned twice"
        pins[key] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(text) for text in
            [*project["dependencies"], *(r for group in extras.values() for r in group)]]


def test_every_dependency_is_pinned_inside_its_range():
    pins = _pins()
    assert "unlearnscope" not in pins
    for requirement in _requirements():
        key = canonicalize_name(requirement.name)
        assert key in pins, f"{requirement.name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[key]}, outside {requirement}")


def test_make_install_uses_the_lock_and_its_torch(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    venv = tmp_path / "venv"
    dry_run = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    torch = _pins()["torch"]
    assert f"pip install --quiet torch=={torch} " in dry_run
    assert '-c constraints.txt -e ".[dev]"' in dry_run
    unpinned = subprocess.run(["make", "-n", "install", f"VENV={venv}", "CONSTRAINTS="],
                              cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert "-c " not in unpinned and '-e ".[dev]"' in unpinned
