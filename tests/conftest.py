import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Benchmark data shipped beside the repository (tests may read it directly).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "symbolic_moe"
