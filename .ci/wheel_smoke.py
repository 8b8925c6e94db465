"""Smoke test of an installed wheel (CI and cibuildwheel): the core routes, plans and simulates,
the bundled data loads, `symoe demo` and `symoe run --help` work, and no source tree is needed."""

import subprocess
import sys
from pathlib import Path

import numpy as np

import symoe

assert "site-packages" in symoe.__file__, f"not the installed wheel: {symoe.__file__}"
qs = symoe.load_questions("mmlu_pro", limit=20)
cfg = symoe.Config.bundled("paper16").with_devices(2)
profiles = symoe.Profiles(cfg.names[:4], ("law", "math"), np.array([[3, 0], [0, 3], [1, 1], [2, 2]], dtype=np.int64))
a = symoe.route(profiles, [["law"] if q.category == "law" else ["math"] for q in qs], k=3, seed=0,
                question_ids=[q.id for q in qs])
p = symoe.plan(a, cfg, aggregator=cfg.names[0])
p.validate()
t = symoe.simulate(p, cfg)
assert t.makespan > 0 and abs(t.makespan - p.makespan) <= 1e-9 * p.makespan, (t.makespan, p.makespan)
print(f"wheel smoke: {len(qs)} questions routed, {p.metrics()['loads']} loads, makespan {p.makespan:.1f} s")
symoe_cli = Path(sys.executable).with_name("symoe")
for args in (["demo", "--devices", "2"], ["run", "--help"]):
    subprocess.run([str(symoe_cli), *args], check=True, stdout=subprocess.DEVNULL, timeout=600)
print("wheel smoke: symoe demo, symoe run --help")
