#include "plan.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "check.hpp"

namespace symoe {

static std::string gb(double b) { return std::to_string(b / 1e9).substr(0, 6) + " GB"; }

double resident_bytes(const ModelCost& m) { return m.weight_bytes + m.extra_bytes; }

double decode_rate(const ModelCost& m, double b) {
    if (m.curve_n == 0) return std::min(std::max(b, 1.0) * m.stream_tps, m.decode_tps);
    if (b <= 1) return m.curve[0];
    double lo = 1;
    for (int i = 0; i + 1 < m.curve_n; ++i, lo *= 2)
        if (b <= 2 * lo) return m.curve[i] + (b - lo) / lo * (m.curve[i + 1] - m.curve[i]);
    return m.curve[m.curve_n - 1];
}

static double step_seconds(const ModelCost& m, double b) { return b <= 0 ? 0.0 : b / decode_rate(m, b); }

// Decode seconds of b requests started together (b within max_seqs): they drain by length.
static double drain(const ModelCost& m, Role role, double b) {
    int r = int(role), K = m.q_n[r];
    if (K == 0) {
        const Tokens& t = m.tokens;
        return (role == Role::Expert ? t.expert_output : t.aggregate_output) * step_seconds(m, b);
    }
    double s = 0, prev = 0;
    for (int j = 0; j < K; ++j) {
        double q = m.quantiles[r][j];
        s += (q - prev) * step_seconds(m, b * double(K - j) / double(K));
        prev = q;
    }
    return s;
}

static double mean_output(const ModelCost& m, Role role) {
    int r = int(role), K = m.q_n[r];
    if (K == 0) return role == Role::Expert ? m.tokens.expert_output : m.tokens.aggregate_output;
    double s = 0;
    for (int j = 0; j < K; ++j) s += m.quantiles[r][j];
    return s / double(K);
}

// Above max_seqs the engine admits the next request as one finishes: max_seqs stay in flight, each
// queued request adds its mean length at rate(max_seqs), and the last max_seqs drain. Per request this
// never rises with n (drain(cap) >= cap * mean / rate(cap)), so the lower bound's premises hold.
static double decode_seconds(const ModelCost& m, Role role, int64_t n) {
    double cap = m.max_seqs > 0 ? m.max_seqs : double(n);
    if (double(n) <= cap) return drain(m, role, double(n));
    return (double(n) - cap) * mean_output(m, role) / decode_rate(m, cap) + drain(m, role, cap);
}

double run_work(const ModelCost& m, Role role, int64_t n) {
    if (n <= 0) return 0.0;
    const Tokens& t = m.tokens;
    double pin = role == Role::Expert ? t.expert_prompt : t.aggregate_prompt;
    if (m.drain()) return double(n) * pin / m.prefill_tps + decode_seconds(m, role, n);
    double out = role == Role::Expert ? t.expert_output : t.aggregate_output;
    return double(n) * (pin / m.prefill_tps + out / m.decode_tps);
}

double run_seconds(const ModelCost& m, Role role, int64_t n, int32_t tp, double tp_eff) {
    if (n <= 0) return 0.0;
    const Tokens& t = m.tokens;
    double out = role == Role::Expert ? t.expert_output : t.aggregate_output;
    double speed = 1.0 + double(tp - 1) * tp_eff;
    if (m.drain()) return m.overhead_s + run_work(m, role, n) / speed;
    // Batched generation is throughput-bound, but no batch beats one sequence decoded alone.
    return m.overhead_s + std::max(run_work(m, role, n), out / m.stream_tps) / speed;
}

void check_model(const ModelCost& x, const std::string& who) {
    for (double v : {x.weight_bytes, x.extra_bytes, x.load_s, x.unload_s, x.wake_s, x.overhead_s})
        SYMOE_CHECK(std::isfinite(v) && v >= 0, who + ": sizes and times must be finite and >= 0, got " + num(v));
    SYMOE_CHECK(std::isfinite(x.park_s), who + ": park_s must be finite, got " + num(x.park_s));
    for (double v : {x.prefill_tps, x.decode_tps, x.stream_tps})
        SYMOE_CHECK(std::isfinite(v) && v > 0, who + ": throughputs must be positive and finite, got " + num(v));
    const Tokens& t = x.tokens;
    for (double v : {t.expert_prompt, t.expert_output, t.aggregate_prompt, t.aggregate_output})
        SYMOE_CHECK(std::isfinite(v) && v >= 0, who + ": token counts must be finite and >= 0, got " + num(v));
    SYMOE_CHECK(std::isfinite(x.max_seqs) && x.max_seqs >= 0, who + ": max_seqs must be finite and >= 0, got " + num(x.max_seqs));
    SYMOE_CHECK(x.curve_n >= 0 && x.curve_n <= kCurvePoints, who + ": decode curve has " + num(x.curve_n) + " points");
    for (int i = 0; i < x.curve_n; ++i) {
        double v = x.curve[i], prev = i ? x.curve[i - 1] : v;
        SYMOE_CHECK(std::isfinite(v) && v > 0, who + ": decode curve rates must be positive and finite, got " + num(v));
        // Twice the sequences never decode slower, nor more than twice as fast: a run never gets shorter
        // with more requests, nor two runs shorter than one of both (the lower bound needs both).
        SYMOE_CHECK(v >= prev && v <= 2 * prev, who + ": decode curve point " + num(i) + " (" + num(v) +
                                                    " tokens/s) must lie in [previous, 2 x previous] = [" + num(prev) +
                                                    ", " + num(2 * prev) + "]");
    }
    for (int r = 0; r < 2; ++r) {
        SYMOE_CHECK(x.q_n[r] >= 0 && x.q_n[r] <= kQuantiles, who + ": " + num(x.q_n[r]) + " length quantiles");
        for (int j = 0; j < x.q_n[r]; ++j) {
            double v = x.quantiles[r][j];
            SYMOE_CHECK(std::isfinite(v) && v >= 0 && (j == 0 || v >= x.quantiles[r][j - 1]),
                        who + ": output length quantiles must be finite, >= 0 and ascending, got " + num(v) +
                            " at " + num(j));
        }
    }
}

void check_inputs(const Workload& w, const Costs& c) {
    int64_t M = int64_t(c.models.size()), D = int64_t(c.devices.size());
    SYMOE_CHECK(D > 0, "no devices: at least one device is needed");
    SYMOE_CHECK(M > 0, "pool is empty");
    SYMOE_CHECK(w.N >= 0 && w.k >= 0, "assignment shape must be non-negative");
    SYMOE_CHECK(w.N > 0 && w.k > 0, "assignment is empty: nothing to plan");
    // Planner, validator and simulator keep devices x models tables.
    SYMOE_CHECK(product_within(D, M, kMaxDeviceModels),
                num(D) + " devices x " + num(M) + " models exceed the limit of 2^24 pairs");
    for (int64_t d = 0; d < D; ++d) {
        const Device& x = c.devices[d];
        SYMOE_CHECK(std::isfinite(x.memory_bytes) && x.memory_bytes > 0,
                    "device " + num(d) + " memory must be a positive finite number of bytes, got " + num(x.memory_bytes));
        SYMOE_CHECK(std::isfinite(x.host_bytes) && x.host_bytes >= 0,
                    "device " + num(d) + " host memory must be finite and >= 0, got " + num(x.host_bytes));
    }
    SYMOE_CHECK(std::isfinite(c.tp_efficiency) && c.tp_efficiency >= 0 && c.tp_efficiency <= 1,
                "tp_efficiency must be in [0, 1], got " + num(c.tp_efficiency));
    double biggest = 0;
    for (auto& d : c.devices) biggest = std::max(biggest, d.memory_bytes);
    for (int64_t m = 0; m < M; ++m) check_model(c.models[m], "model " + num(m));
    std::vector<uint8_t> used(M, 0);
    for (int64_t i = 0; i < w.N * w.k; ++i) {
        SYMOE_CHECK(w.experts[i] >= 0 && w.experts[i] < M,
                    "assignment names model id " + num(w.experts[i]) + " (question " + num(i / w.k) + ", slot " +
                        num(i % w.k) + ") outside the pool of " + num(M));
        used[w.experts[i]] = 1;
    }
    if (w.aggregator)
        for (int64_t q = 0; q < w.N; ++q) {
            SYMOE_CHECK(w.aggregator[q] >= -1 && w.aggregator[q] < M,
                        "aggregator id " + num(w.aggregator[q]) + " (question " + num(q) + ") outside [-1, " + num(M) + ")");
            if (w.aggregator[q] >= 0) used[w.aggregator[q]] = 1;
        }
    for (int64_t m = 0; m < M; ++m)
        SYMOE_CHECK(!used[m] || fits(resident_bytes(c.models[m]), biggest),
              "model " + std::to_string(m) + " needs " + gb(resident_bytes(c.models[m])) +
                  " but the largest device has " + gb(biggest));
}

void validate(const Plan& p, const Workload& w, const Costs& c) {
    int64_t M = int64_t(c.models.size());
    SYMOE_CHECK(p.devices == int64_t(c.devices.size()), "plan has " + std::to_string(p.devices) +
                                                      " devices, the cost model " + std::to_string(c.devices.size()));
    std::vector<int32_t> expert_done(size_t(w.N * w.k), 0), agg_done(size_t(w.N), 0);
    std::vector<std::vector<int8_t>> state(p.devices, std::vector<int8_t>(M, 0));  // 0 out, 1 resident, 2 parked
    std::vector<double> used(p.devices, 0.0), host(p.devices, 0.0);
    const int64_t n_items = int64_t(p.items.size());
    // Every field of every step in range first: the checks below and simulate() index with them.
    for (size_t s = 0; s < p.steps.size(); ++s) {
        const Step& st = p.steps[s];
        std::string at = "step " + num(s) + ": ";
        SYMOE_CHECK(int(st.kind) >= 0 && int(st.kind) <= int(StepKind::Pause), at + "unknown kind " + num(int(st.kind)));
        SYMOE_CHECK(st.role == Role::Expert || st.role == Role::Aggregate, at + "unknown role " + num(int(st.role)));
        SYMOE_CHECK(st.device >= 0 && st.device < p.devices,
                    at + "device " + num(st.device) + " out of range [0, " + num(p.devices) + ")");
        SYMOE_CHECK(st.tp >= 1 && int64_t(st.device) + st.tp <= p.devices,
                    at + "tp " + num(st.tp) + " on device " + num(st.device) + " spans beyond the plan's " +
                        num(p.devices) + " devices");
        SYMOE_CHECK(st.model >= (st.kind == StepKind::Pause ? -1 : 0) && st.model < M,
                    at + "model " + num(st.model) + " out of range [0, " + num(M) + ")");
        SYMOE_CHECK(0 <= st.item_begin && st.item_begin <= st.item_end && st.item_end <= n_items,
                    at + "item range [" + num(st.item_begin) + ", " + num(st.item_end) + ") out of bounds [0, " +
                        num(n_items) + "]");
        SYMOE_CHECK(std::isfinite(st.seconds) && st.seconds >= 0,
                    at + "seconds must be finite and >= 0, got " + num(st.seconds));
    }
    // Residency per (device, model): a model is loaded, run, parked, woken and unloaded by one group
    // of devices [owner, owner + tp), and every step on it must name that same group: a model loaded
    // on one device cannot be run with tp = 2, nor a sharded model run or unloaded on one device.
    std::vector<std::vector<int32_t>> owner(p.devices, std::vector<int32_t>(M, -1)), width(p.devices, std::vector<int32_t>(M, 0));
    auto group = [&](int32_t d, int32_t m) {
        return owner[d][m] < 0 ? std::string("no device")
                               : "devices [" + num(owner[d][m]) + ", " + num(owner[d][m] + width[d][m]) + ")";
    };
    // The steps are checked in list order, which is each device's order in the simulator too (a
    // tensor-parallel step takes its place in the order of every device it spans).
    for (size_t s = 0; s < p.steps.size(); ++s) {
        const Step& st = p.steps[s];
        std::string at = "step " + std::to_string(s) + ": ";
        if (st.kind == StepKind::Pause) continue;
        const int32_t m = st.model, d0 = st.device, d1 = st.device + st.tp;
        auto who = [&] { return "model " + num(m); };  // messages built only on failure
        auto span = [&] { return st.tp == 1 ? "device " + num(d0) : "devices [" + num(d0) + ", " + num(d1) + ")"; };
        // The state the step needs on every device it spans, and the group it must belong to.
        auto in_group = [&](int8_t want) {
            for (int32_t d = d0; d < d1; ++d)
                if (state[d][m] != want || owner[d][m] != d0 || width[d][m] != st.tp) return false;
            return true;
        };
        auto set_state = [&](int8_t v) {
            for (int32_t d = d0; d < d1; ++d) {
                state[d][m] = v;
                owner[d][m] = v ? d0 : -1;
                width[d][m] = v ? st.tp : 0;
            }
        };
        double size = resident_bytes(c.models[m]) / st.tp;
        switch (st.kind) {
            case StepKind::Load:
                for (int32_t d = d0; d < d1; ++d)
                    SYMOE_CHECK(state[d][m] == 0, at + who() + " loaded while already " +
                                                      (state[d][m] == 1 ? "resident" : "parked") + " on " + group(d, m) +
                                                      " (load on " + span() + ")");
                for (int32_t d = d0; d < d1; ++d) {
                    used[d] += size;
                    SYMOE_CHECK(fits(used[d], c.devices[d].memory_bytes),
                          at + "device " + std::to_string(d) + " memory exceeded: " + gb(used[d]) + " > " +
                              gb(c.devices[d].memory_bytes));
                }
                set_state(1);
                break;
            case StepKind::Unload:
                SYMOE_CHECK(in_group(1), at + "unload of " + who() + " on " + span() + ", where it is not resident (" +
                                             (state[d0][m] ? "held by " + group(d0, m) : "not loaded") + ")");
                for (int32_t d = d0; d < d1; ++d) used[d] -= size;
                set_state(0);
                break;
            case StepKind::Park:
                SYMOE_CHECK(in_group(1) && c.models[m].park_s >= 0, at + "park of a non-resident or unparkable model");
                for (int32_t d = d0; d < d1; ++d) {
                    used[d] -= size;
                    host[d] += c.models[m].weight_bytes / st.tp;
                    SYMOE_CHECK(fits(host[d], c.devices[d].host_bytes),
                                at + "host memory for parked models exceeded on device " + std::to_string(d));
                }
                set_state(2);
                break;
            case StepKind::Wake:
                SYMOE_CHECK(in_group(2), at + "wake of " + who() + " on " + span() + ", where it is not parked");
                for (int32_t d = d0; d < d1; ++d) {
                    used[d] += size;
                    host[d] -= c.models[m].weight_bytes / st.tp;
                    SYMOE_CHECK(fits(used[d], c.devices[d].memory_bytes), at + "memory exceeded on wake");
                }
                set_state(1);
                break;
            case StepKind::Run: {
                SYMOE_CHECK(in_group(1), at + "run of model " + std::to_string(m) + " with tp " + num(st.tp) +
                                             " on " + span() + ", where it is not resident (" +
                                             (state[d0][m] == 1 ? "resident on " + group(d0, m) : "not loaded") + ")");
                for (int64_t i = st.item_begin; i < st.item_end; ++i) {
                    int64_t it = p.items[i];
                    if (st.role == Role::Expert) {
                        SYMOE_CHECK(it >= 0 && it < w.N * w.k, at + "expert item " + num(it) + " out of range");
                        SYMOE_CHECK(w.experts[it] == m, at + "question " + std::to_string(it / w.k) + " slot " +
                                                             std::to_string(it % w.k) + " run by the wrong model");
                        expert_done[it]++;
                    } else {
                        SYMOE_CHECK(it >= 0 && it < w.N, at + "aggregation item " + num(it) + " out of range");
                        SYMOE_CHECK(w.aggregator && w.aggregator[it] == m,
                              at + "question " + std::to_string(it) + " aggregated by the wrong model");
                        agg_done[it]++;
                    }
                }
                break;
            }
            default: SYMOE_CHECK(false, at + "unknown step kind");
        }
    }
    for (int64_t i = 0; i < w.N * w.k; ++i)
        SYMOE_CHECK(expert_done[i] == 1, "question " + std::to_string(i / w.k) + " slot " + std::to_string(i % w.k) +
                                       " runs " + std::to_string(expert_done[i]) + " times, expected once");
    for (int64_t q = 0; q < w.N; ++q) {
        int want = (w.aggregator && w.aggregator[q] >= 0) ? 1 : 0;
        SYMOE_CHECK(agg_done[q] == want, "question " + std::to_string(q) + " aggregated " + std::to_string(agg_done[q]) +
                                       " times, expected " + std::to_string(want));
    }
}

}  // namespace symoe
