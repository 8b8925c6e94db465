"""Smoke test of an installed wheel (CI and cibuildwheel): the core routes, plans and simulates,
the bundled data loads, and no test file or source tree is needed."""

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
