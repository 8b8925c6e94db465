"""Print every skipped test with its reason; fail on a skip not listed in .ci/expected_skips.txt.
Usage: python .ci/check_skips.py JUNIT_XML"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def node_id(case: ET.Element) -> str:
    """pytest's node id from a junit testcase: ``tests.test_x.TestK`` + ``test_m`` -> ``tests/test_x.py::TestK::test_m``."""
    parts, name = case.get("classname", "").split("."), case.get("name", "")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a test file
        path = Path(*parts[:i]).with_suffix(".py")
        if path.is_file():
            return "::".join([str(path), *parts[i:], name])
    return "::".join(p for p in (case.get("classname", ""), name) if p)  # e.g. a module skipped at collection


expected = {}
for line in (Path(__file__).parent / "expected_skips.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        node, _, why = line.partition(" # ")
        expected[node.strip()] = why.strip()

unexpected = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    skip = case.find("skipped")
    if skip is None or skip.get("type") == "pytest.xfail":  # an expected failure is not a skip
        continue
    node = node_id(case)
    ok = any(node == e or node.startswith(e + "[") for e in expected)  # a listed test, any of its parameters
    print(f"skipped {'(expected)' if ok else '(UNEXPECTED)'}: {node}: {skip.get('message', '')}")
    if not ok:
        unexpected.append(node)
if unexpected:
    sys.exit(f"{len(unexpected)} unexpected skip(s): {', '.join(unexpected)} (fix them, or list them with why in "
             ".ci/expected_skips.txt)")
print("skips: none unexpected")
