"""The core's cost model: per-model tokens per request (issue 12, item 4) and its one formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from symoe import _core

GB = 1e9
FIGURES = dict(weight_bytes=5 * GB, extra_bytes=1 * GB, load_s=10.0, unload_s=1.0, park_s=-1.0, wake_s=0.0,
               overhead_s=2.0, prefill_tps=1000.0, decode_tps=100.0, stream_tps=10.0)


def row(tokens=(math.nan,) * 4, **kw) -> list[float]:
    f = {**FIGURES, **kw}
    return [f[c] for c in _core.COST_COLUMNS] + list(tokens)


def args(rows, experts, aggregator=None, tokens=(100.0, 50.0, 400.0, 20.0)) -> dict:
    return dict(experts=np.asarray(experts), aggregator=None if aggregator is None else np.asarray(aggregator),
                model_costs=np.asarray(rows, dtype=float), device_memory=np.array([80 * GB]),
                device_overlap=np.array([True]), device_host=np.array([0.0]), tokens=np.asarray(tokens),
                tp_efficiency=0.5)


def run_durations(a: dict) -> list[tuple[int, int, float]]:
    p = _core.make_plan(**a, strategy="symoe", pause_s=0.0, replicate=True)
    t = _core.simulate(p, **a)
    return [(int(p["model"][s]), int(p["role"][s]), t["end"][s] - t["start"][s])
            for s in range(len(p["kind"])) if p["kind"][s] == 1]


def test_formula():
    # 3 requests of 100 prompt and 50 output tokens: 3 * (0.1 + 0.5) = 1.8 s of work, below the
    # 5 s one stream takes for 50 tokens; plus 2 s overhead. tp = 2 at efficiency 0.5: / 1.5.
    r = row((100.0, 50.0, 400.0, 20.0))
    assert _core.run_seconds(r, 0, 3) == pytest.approx(2 + 5)
    assert _core.run_seconds(r, 0, 30) == pytest.approx(2 + 18)
    assert _core.run_seconds(r, 1, 30, 2, 0.5) == pytest.approx(2 + 30 * (0.4 + 0.2) / 1.5)
    assert _core.run_seconds(r, 0, 0) == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(role=2), "role must be 0"), (dict(n=-1), "n must be >= 0"), (dict(tp=0), "tp must be >= 1"),
    (dict(tp_efficiency=1.5), "tp_efficiency"), (dict(model_cost=row()), "token counts must be finite"),
    (dict(model_cost=row()[:10]), "COST_COLUMNS"),
    (dict(model_cost=row((1, 1, 1, 1), decode_tps=0.0)), "throughputs must be positive"),
])
def test_formula_bad_arguments(bad, match):
    a = dict(model_cost=row((1.0, 1.0, 1.0, 1.0)), role=0, n=1, tp=1, tp_efficiency=0.0) | bad
    with pytest.raises(ValueError, match=match):
        _core.run_seconds(**a)


def test_per_model_tokens_drive_the_plan_and_the_simulation():
    # Model 1 writes 10x the output tokens of the config's figure: its runs take 10x the decode
    # time; model 0 (NaN: the config's figures) is unchanged, and so is a 10-column matrix.
    experts = [[0, 1]] * 40
    long = row((math.nan, 500.0, math.nan, math.nan))
    got = {(m, r): s for m, r, s in run_durations(args([row(), long], experts))}
    assert got[(0, 0)] == pytest.approx(2 + 40 * (0.1 + 0.5))
    assert got[(1, 0)] == pytest.approx(2 + 40 * (0.1 + 5.0))
    legacy = {(m, r): s for m, r, s in run_durations(args([row()[:10], row()[:10]], experts))}
    assert legacy[(1, 0)] == pytest.approx(got[(0, 0)])
    # The bound follows the per-model figures too: the long model's work alone exceeds the old plan.
    assert _core.lower_bound(**args([row(), long], experts)) > 40 * 5.0
    assert _core.lower_bound(**args([row(), row()], experts)) < 40 * 5.0


def test_aggregation_tokens_per_model():
    a = args([row(), row((math.nan, math.nan, 1000.0, 200.0))], [[0]] * 10, [1] * 10)
    got = {(m, r): s for m, r, s in run_durations(a)}
    assert got[(1, 1)] == pytest.approx(2 + 10 * (1.0 + 2.0))


def test_bad_token_columns():
    with pytest.raises(ValueError, match="model 1: token counts must be finite and >= 0"):
        _core.lower_bound(**args([row(), row((1.0, -1.0, 1.0, 1.0))], [[0]]))
    with pytest.raises(ValueError, match=r"M x 10 \(COST_COLUMNS\), M x 14"):
        _core.lower_bound(**args([row() + [1.0]], [[0]]))


# ---- per-model tokens in the pool config and in calibration --------------------------------

R1 = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def test_paper16_reasoning_models_write_more():
    from symoe import Config

    cfg = Config.bundled("paper16")
    r1, other = cfg.model_tokens(R1), cfg.model_tokens(LLAMA)
    assert other == cfg.tokens  # no figures of its own: the [tokens] table's
    assert r1.expert_output == r1.aggregate_output == 8 * cfg.tokens.expert_output
    assert r1.expert_prompt == cfg.tokens.expert_prompt
    # The core receives them: one run of 100 aggregations by R1 vs the same model at 600 tokens.
    costs = cfg.core_args()["model_costs"]
    assert costs.shape == (16, len(_core.COST_COLUMNS) + len(_core.TOKEN_COLUMNS) + len(_core.DRAIN_COLUMNS))
    out = len(_core.COST_COLUMNS) + len(_core.TOKEN_COLUMNS) - 1  # aggregate_output_tokens
    assert costs[cfg.index(R1), out] == 4800.0 and costs[cfg.index(LLAMA), out] == 600.0
    assert cfg.run_seconds(R1, "aggregate", 100) > 5 * cfg.run_seconds(LLAMA, "aggregate", 100)
    # Written and read back with the rest of the pool.
    again = Config.from_dict(__import__("tomllib").loads(cfg.to_toml()))
    assert again.model_tokens(R1) == r1 and again.model_tokens(LLAMA) == other


def test_config_rejects_bad_token_figures(tmp_path):
    from symoe import Config
    from symoe.errors import SymoeError

    f = tmp_path / "pool.toml"
    f.write_text('[[model]]\nname = "a"\nparams_b = 1\nexpert_output_tokens = -5\n')
    with pytest.raises(SymoeError, match=r"\[\[model\]\] #1: expert_output_tokens"):
        Config.from_toml(f)


def test_calibration_learns_each_models_lengths():
    from symoe import Config
    from symoe.execution.calibration import calibrate
    from symoe.execution.report import RunReport, StepRecord
    from symoe.planning.steps import StepKind

    cfg = Config.bundled("paper16")

    def run(step, model, role, n, prompt, out):
        return StepRecord(step, 0, StepKind.RUN, model, 0.0, 10.0 + step, 0.0, 0.0, n, n * out, n * prompt,
                          {"role": role, "generated": n})

    steps = [run(0, LLAMA, "expert", 10, 250, 500), run(1, R1, "expert", 10, 260, 6000),
             run(2, R1, "aggregate", 4, 2000, 7000), run(3, R1, "aggregate", 6, 2100, 8000)]
    new = calibrate(cfg, RunReport("r", steps, [], 20.0, 20.0, 30, 0))
    assert new.model_tokens(LLAMA) == type(cfg.tokens)(250, 500, new.tokens.aggregate_prompt, new.tokens.aggregate_output)
    r1 = new.model_tokens(R1)
    assert (r1.expert_prompt, r1.expert_output) == (260, 6000)
    assert r1.aggregate_prompt == pytest.approx((4 * 2000 + 6 * 2100) / 10)
    assert r1.aggregate_output == pytest.approx((4 * 7000 + 6 * 8000) / 10)
    # A model the run did not measure keeps its figures (the R1-Qwen model: its own 4800).
    assert new.model_tokens("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").expert_output == 4800
    assert new.model_tokens("Qwen/Qwen2.5-7B-Instruct").expert_output == new.tokens.expert_output


def test_long_reasoning_experts_are_replicated():
    # A reasoning expert picked for many questions: at 8x the others' output tokens its work
    # dominates and the balanced fill runs it on several devices; at equal tokens once.
    from dataclasses import replace

    import symoe
    from symoe import Config
    from symoe.planning.steps import StepKind

    cfg = Config.bundled("paper16").with_devices(4)
    equal = replace(cfg, models=tuple(replace(m, expert_output_tokens=None, aggregate_output_tokens=None)
                                      for m in cfg.models))
    r1 = cfg.index("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    rng = np.random.default_rng(0)
    pr = np.ones(16)
    pr[r1] = 3
    a = symoe.Assignment(cfg.names, np.stack([rng.choice(16, size=3, replace=False, p=pr / pr.sum())
                                              for _ in range(2000)]))
    loads = {}
    for label, c in (("long", cfg), ("equal", equal)):
        p = symoe.plan(a, c, optimize_s=0)
        loads[label] = int(np.sum((p.arrays.kind == StepKind.LOAD) & (p.arrays.model == r1)))
        assert p.gap < 0.05
    assert loads["long"] >= 2 and loads["equal"] == 1


def test_calibration_learns_lengths_from_the_store(tmp_path):
    # Every stored generation counts, reused ones from earlier runs too (the run's report has
    # none of them); models without stored generations keep the report's or their own figures.
    from symoe import Config
    from symoe.execution.calibration import calibrate
    from symoe.execution.report import RunReport
    from symoe.records import Generation
    from symoe.store import Store

    cfg = Config.bundled("paper16")
    with Store(tmp_path / "s.sqlite") as store:
        for i, (model, role, pin, out) in enumerate([(R1, "expert", 300, 5000), (R1, "expert", 310, 7000),
                                                     (R1, "aggregate", 2500, 9000), (LLAMA, "expert", 280, 400),
                                                     (LLAMA, "aggregator-benchmark", 2000, 100)]):
            store.put(Generation(f"k{i}", model, f"q{i}", role, 0, "{}", "text", pin, out, "stop"))
        assert store.token_lengths()[(R1, "expert")] == (2, 305.0, 6000.0)
        new = calibrate(cfg, RunReport("r", [], [], 0.0, 0.0, 0, 5), store)
    r1, llama = new.model_tokens(R1), new.model_tokens(LLAMA)
    assert (r1.expert_prompt, r1.expert_output, r1.aggregate_prompt, r1.aggregate_output) == (305, 6000, 2500, 9000)
    assert (llama.expert_prompt, llama.expert_output) == (280, 400)
    assert llama.aggregate_output == cfg.tokens.aggregate_output  # the benchmark's role is not aggregation


def test_calibration_rescales_a_measured_curve(tmp_path):
    """run-plan --calibrate on a model timed by the drain: its curve (which the drain reads, unlike
    decode_tps) divided by how much longer its steps took, quantiles from the store (review 14 #10)."""
    import tomllib

    from symoe import Config
    from symoe.execution.calibration import calibrate
    from symoe.execution.report import RunReport, StepRecord
    from symoe.planning.steps import StepKind
    from symoe.records import Generation
    from symoe.store import Store

    cfg = Config.from_dict(tomllib.loads('[devices]\nmemory_gb = 8.0\n[[model]]\nname = "a"\nweight_gb = 1.0\n'
                                         'decode_curve = [20.0, 38.0, 70.0]\nmax_seqs = 4\n'
                                         'expert_output_quantiles = [10, 20, 30, 40]\nexpert_prompt_tokens = 100\n'))
    with Store(tmp_path / "s.sqlite") as store:
        for i, out in enumerate((10, 30, 50, 70)):
            store.put(Generation(f"k{i}", "a", f"q{i}", "expert", 0, "{}", "text", 100, out, "stop"))
        want = Config.from_dict(tomllib.loads(cfg.to_toml().replace("[10.0, 20.0, 30.0, 40.0]", "[10, 30, 50, 70]")))
        oh = cfg.model("a").overhead_s
        steps = [StepRecord(i, 0, StepKind.RUN, "a", 0.0, oh + 3 * (want.run_seconds("a", "expert", n) - oh), 0.0, 0.0,
                            n, 40 * n, 100 * n, {"role": "expert", "generated": n}) for i, n in enumerate((2, 4, 8))]
        new = calibrate(cfg, RunReport("r", steps, [], 1.0, 1.0, 14, 0), store)
    a = new.model("a")
    assert a.decode_curve == pytest.approx((20 / 3, 38 / 3, 70 / 3))
    assert a.expert_output_quantiles == (10, 30, 50, 70)
    assert new.run_seconds("a", "expert", 4) == pytest.approx(steps[1].end)
