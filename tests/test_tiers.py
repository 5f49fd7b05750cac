"""The test tiers: `-m "not slow"` is the fast loop, so a distributed, browser, network or serving test must count as
slow (tests/conftest.py marks it), and every marker a test uses is registered in pyproject.toml."""

import re
from pathlib import Path

import pytest
from conftest import pytest_collection_modifyitems

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


class FakeItem:
    def __init__(self, *names: str):
        self.own_markers = [getattr(pytest.mark, name).mark for name in names]

    def get_closest_marker(self, name: str):
        return next((mark for mark in self.own_markers if mark.name == name), None)

    def add_marker(self, marker) -> None:
        self.own_markers.append(marker.mark)


@pytest.mark.parametrize("name", ["distributed", "browser", "network", "serving"])
def test_expensive_kinds_count_as_slow(name):
    item = FakeItem(name)
    pytest_collection_modifyitems([item])
    assert item.get_closest_marker("slow") is not None


def test_other_tests_stay_in_the_fast_loop():
    items = [FakeItem(), FakeItem("parametrize")]
    pytest_collection_modifyitems(items)
    assert all(item.get_closest_marker("slow") is None for item in items)


def test_every_marker_used_is_registered_in_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; we support 3.10)
    registered = set(re.findall(r'^\s+"(\w+): ', pyproject.split("markers = [", 1)[1].split("]", 1)[0], re.M))
    used = {m for path in (ROOT / "tests").glob("*.py") for m in re.findall(r"pytest\.mark\.(\w+)", path.read_text())}
    assert 'addopts = "--strict-markers"' in pyproject
    assert used - BUILTIN_MARKS <= registered
    assert {"slow", "distributed", "browser", "network", "serving"} <= registered


def test_test_sh_runs_every_tier_unless_told_otherwise():
    """CI runs scripts/test.sh bare: no marker expression there or in addopts may drop a tier by default."""
    command = next(line for line in (ROOT / "scripts" / "test.sh").read_text().splitlines() if "-m pytest" in line)
    assert '"$@"' in command and " -m " not in command.split("-m pytest", 1)[1].split("#")[0]
    addopts = re.search(r'^addopts = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert "-m" not in addopts.split()
