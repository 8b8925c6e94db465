import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from symoe.method.datasets import bundled

sys.path.insert(0, str(Path(__file__).parent))

from ray_cluster import ray_cluster  # noqa: E402,F401 (a session fixture: one Ray cluster start for the session)

# Hypothesis: under CI (the CI variable set) the same examples every run (derandomize: a failure
# reproduces on rerun) and no example database; everywhere, a failure prints the blob that replays it.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def data_file(name: str) -> Path:
    """A benchmark file the package ships (the authors' name, e.g. ``MMLU_Pro_test.json``), gzipped."""
    path = bundled(name + ".gz")
    if not path.is_file():
        pytest.fail(f"benchmark data file missing from the package: {path}", pytrace=False)
    return path


def raw_items(name: str) -> list[dict[str, Any]]:
    """The items of a shipped benchmark file as the authors wrote them."""
    items: list[dict[str, Any]] = json.loads(gzip.decompress(data_file(name).read_bytes()))
    return items


class BenchmarkData:
    """``bench_data / "MMLU_Pro_test.json"``: the shipped file (inside the repository, never beside it)."""

    def __truediv__(self, name: str) -> Path:
        return data_file(name)


@pytest.fixture(scope="session")
def bench_data() -> BenchmarkData:
    """The one way tests reach the benchmark data."""
    return BenchmarkData()


@pytest.fixture(autouse=True)
def _machine_profiles(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Machine profiles (config/profile.py) in a fresh folder per test: never the user's cache."""
    monkeypatch.setenv("SYMOE_PROFILES", str(tmp_path_factory.mktemp("profiles")))
