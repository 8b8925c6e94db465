import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The Symbolic-MoE benchmark data (real questions) lives beside the checkout, not in it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "symbolic_moe"


class BenchmarkData:
    """``bench_data / "MMLU_Pro_test.json"``: the file, or a failure that says what is missing."""

    def __truediv__(self, name: str) -> Path:
        path = DATA / name
        if not path.is_file():
            pytest.fail(f"benchmark data file missing: {path} (tests read the Symbolic-MoE questions from "
                        f"shared/data/symbolic_moe beside the repository checkout)", pytrace=False)
        return path


@pytest.fixture(scope="session")
def bench_data() -> BenchmarkData:
    """The one way tests reach the benchmark data."""
    return BenchmarkData()
