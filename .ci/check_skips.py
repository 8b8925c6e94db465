"""Print every skipped test with its reason; fail on a skip not listed in .ci/expected_skips.txt.
Usage: python .ci/check_skips.py JUNIT_XML"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

expected = {}
for line in (Path(__file__).parent / "expected_skips.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        node, _, why = line.partition(" # ")
        expected[node.strip()] = why.strip()

unexpected = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    skip = case.find("skipped")
    if skip is None:
        continue
    path = case.get("classname", "").replace(".", "/")
    node = f"{path}.py::{case.get('name')}"
    ok = any(node.startswith(e) for e in expected)
    print(f"skipped {'(expected)' if ok else '(UNEXPECTED)'}: {node}: {skip.get('message', '')}")
    if not ok:
        unexpected.append(node)
if unexpected:
    sys.exit(f"{len(unexpected)} unexpected skip(s): {', '.join(unexpected)} (fix them, or list them with why in "
             ".ci/expected_skips.txt)")
print("skips: none unexpected")
