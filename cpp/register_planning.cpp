// Python bindings of planning: make_plan(), lower_bound(), simulate(), run_seconds() and the cost
// matrix's columns. Workload and costs are converted once (make_inputs), a plan crosses as a dict
// of step arrays (plan_to_dict / plan_from_dict); the GIL is released while the core works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "convert.hpp"
#include "planner.hpp"
#include "simulator.hpp"

namespace py = pybind11;
using namespace symoe;
using namespace symoe_py;

// Model cost columns, in this order (the Python layer builds the matrix): COST_COLUMNS, then
// optionally TOKEN_COLUMNS, the model's own tokens per request (NaN: the `tokens` argument's).
static const char* kCostColumns[] = {"weight_bytes", "extra_bytes", "load_s",    "unload_s",   "park_s",
                                     "wake_s",       "overhead_s",  "prefill_tps", "decode_tps", "stream_tps",
                                     "expert_prompt_tokens", "expert_output_tokens", "aggregate_prompt_tokens",
                                     "aggregate_output_tokens"};
constexpr int kNumFigures = 10, kNumCost = 14;  // COST_COLUMNS; with TOKEN_COLUMNS
// Optionally then DRAIN_COLUMNS, the measured form (plan.hpp): max_seqs (NaN or 0: no limit), the
// decode curve's kCurvePoints rates and kQuantiles output lengths per role, each list NaN-padded at its end.
constexpr int kNumDrain = 1 + kCurvePoints + 2 * kQuantiles, kNumAll = kNumCost + kNumDrain;

static std::vector<std::string> drain_columns() {
    std::vector<std::string> v{"max_seqs"};
    for (int i = 0; i < kCurvePoints; ++i) v.push_back("decode_curve_" + std::to_string(i));
    for (const char* r : {"expert", "aggregate"})
        for (int i = 0; i < kQuantiles; ++i) v.push_back(std::string(r) + "_output_q_" + std::to_string(i));
    return v;
}

// The leading non-NaN entries of r[0, n) (a value after a NaN is refused: the lists are NaN-padded).
template <size_t N>
static int leading(const double* r, int n, std::array<double, N>& out, const std::string& what) {
    int k = 0;
    while (k < n && !std::isnan(r[k])) out[k] = r[k], ++k;
    for (int j = k; j < n; ++j)
        if (!std::isnan(r[j])) throw std::invalid_argument(what + ": a value after NaN padding at entry " + num(j));
    return k;
}

static void drain_figures(ModelCost& x, const double* r) {
    x.max_seqs = std::isnan(r[0]) ? 0.0 : r[0];
    x.curve_n = leading(r + 1, kCurvePoints, x.curve, "decode curve");
    for (int role = 0; role < 2; ++role)
        x.q_n[role] = leading(r + 1 + kCurvePoints + role * kQuantiles, kQuantiles, x.quantiles[role], "length quantiles");
}

// One row of the cost matrix; NaN token columns take `fallback`'s figures.
static ModelCost model_cost(const double* r, int columns, const Tokens& fallback) {
    ModelCost x;
    double* f[] = {&x.weight_bytes, &x.extra_bytes, &x.load_s, &x.unload_s, &x.park_s,
                   &x.wake_s, &x.overhead_s, &x.prefill_tps, &x.decode_tps, &x.stream_tps,
                   &x.tokens.expert_prompt, &x.tokens.expert_output, &x.tokens.aggregate_prompt,
                   &x.tokens.aggregate_output};
    const double* g[] = {&fallback.expert_prompt, &fallback.expert_output, &fallback.aggregate_prompt,
                         &fallback.aggregate_output};
    for (int j = 0; j < kNumCost; ++j)
        *f[j] = j < columns && !(j >= kNumFigures && std::isnan(r[j])) ? r[j] : j >= kNumFigures ? *g[j - kNumFigures] : 0.0;
    if (columns == kNumAll) drain_figures(x, r + kNumCost);
    return x;
}

struct Inputs {
    carray<int64_t> experts, aggregator;  // w points into these: they live as long as the Inputs
    Workload w;
    Costs c;
};

static Inputs make_inputs(py::handle experts, py::handle aggregator, py::handle model_costs_, py::handle device_memory_,
                          py::handle device_overlap_, py::handle device_host_, py::handle tokens_,
                          py::handle tp_efficiency) {
    Inputs in;
    in.experts = to_array<int64_t>(experts, "experts");
    auto model_costs = to_array<double>(model_costs_, "model_costs");
    auto device_memory = to_array<double>(device_memory_, "device_memory");
    auto device_overlap = to_array<bool>(device_overlap_, "device_overlap");
    auto device_host = to_array<double>(device_host_, "device_host");
    auto tokens = to_array<double>(tokens_, "tokens");
    if (in.experts.ndim() != 2)
        throw std::invalid_argument("experts must be a 2-D (questions x k) array, got shape " + dims(in.experts));
    if (model_costs.ndim() != 2 || (model_costs.shape(1) != kNumCost && model_costs.shape(1) != kNumFigures &&
                                    model_costs.shape(1) != kNumAll))
        throw std::invalid_argument("model_costs must be M x " + num(kNumFigures) + " (COST_COLUMNS), M x " +
                                    num(kNumCost) + " (COST_COLUMNS + TOKEN_COLUMNS) or M x " + num(kNumAll) +
                                    " (... + DRAIN_COLUMNS), got shape " + dims(model_costs));
    if (device_memory.ndim() != 1 || device_overlap.ndim() != 1 || device_host.ndim() != 1 ||
        device_overlap.shape(0) != device_memory.shape(0) || device_host.shape(0) != device_memory.shape(0))
        throw std::invalid_argument("device_memory, device_overlap and device_host must be 1-D of equal length, got "
                                    "shapes " + dims(device_memory) + ", " + dims(device_overlap) + ", " + dims(device_host));
    if (tokens.ndim() != 1 || tokens.shape(0) != 4)
        throw std::invalid_argument("tokens must have 4 entries, got shape " + dims(tokens));
    in.w.N = in.experts.shape(0);
    in.w.k = in.experts.shape(1);
    in.w.experts = in.experts.data();
    if (!aggregator.is_none()) {
        in.aggregator = to_array<int64_t>(aggregator, "aggregator");
        if (in.aggregator.ndim() != 1 || in.aggregator.shape(0) != in.w.N)
            throw std::invalid_argument("aggregator must have one entry per question (" + num(in.w.N) + "), got shape " +
                                        dims(in.aggregator));
        in.w.aggregator = in.aggregator.data();
    }
    const Tokens fallback{tokens.data()[0], tokens.data()[1], tokens.data()[2], tokens.data()[3]};
    for (py::ssize_t m = 0; m < model_costs.shape(0); ++m)
        in.c.models.push_back(model_cost(model_costs.data(m, 0), int(model_costs.shape(1)), fallback));
    for (py::ssize_t d = 0; d < device_memory.shape(0); ++d)
        in.c.devices.push_back(Device{device_memory.data()[d], device_overlap.data()[d], device_host.data()[d]});
    in.c.tp_efficiency = to_real(tp_efficiency, "tp_efficiency");
    return in;
}

static py::dict plan_to_dict(Plan&& p) {
    size_t S = p.steps.size();
    std::vector<int8_t> kind(S), role(S);
    std::vector<int32_t> device(S), model(S), tp(S);
    std::vector<int64_t> b(S), e(S);
    std::vector<double> sec(S);
    for (size_t s = 0; s < S; ++s) {
        const Step& x = p.steps[s];
        kind[s] = int8_t(x.kind); role[s] = int8_t(x.role); device[s] = x.device; model[s] = x.model;
        tp[s] = x.tp; b[s] = x.item_begin; e[s] = x.item_end; sec[s] = x.seconds;
    }
    py::ssize_t n = py::ssize_t(S);
    py::dict d;
    d["devices"] = p.devices;
    d["kind"] = to_numpy(std::move(kind), {n});
    d["role"] = to_numpy(std::move(role), {n});
    d["device"] = to_numpy(std::move(device), {n});
    d["model"] = to_numpy(std::move(model), {n});
    d["tp"] = to_numpy(std::move(tp), {n});
    d["item_begin"] = to_numpy(std::move(b), {n});
    d["item_end"] = to_numpy(std::move(e), {n});
    d["seconds"] = to_numpy(std::move(sec), {n});
    py::ssize_t ni = py::ssize_t(p.items.size());
    d["items"] = to_numpy(std::move(p.items), {ni});
    return d;
}

// A plan field's value must fit its Step member before narrowing (validate() checks its range).
template <class T>
static T narrow(const carray<int64_t>& a, py::ssize_t s, const char* name) {
    int64_t v = a.data()[s];
    if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
        throw std::invalid_argument("step " + num(s) + ": " + name + " " + num(v) + " out of range");
    return T(v);
}

static Plan plan_from_dict(py::handle plan) {
    if (!py::isinstance<py::dict>(plan)) throw std::invalid_argument("plan must be a dict of step arrays, got " + show(plan));
    auto d = py::reinterpret_borrow<py::dict>(plan);
    auto get = [&](const char* key) -> py::object {
        if (!d.contains(key)) throw std::invalid_argument(std::string("plan has no '") + key + "'");
        return d[key];
    };
    static const char* names[] = {"kind", "role", "device", "model", "tp", "item_begin", "item_end"};
    std::vector<carray<int64_t>> f;
    for (const char* n : names) f.push_back(to_array<int64_t>(get(n), std::string("plan ") + n));
    auto sec = to_array<double>(get("seconds"), "plan seconds");
    auto items = to_array<int64_t>(get("items"), "plan items");
    Plan p;
    p.devices = to_int<int32_t>(get("devices"), "plan devices");
    py::ssize_t S = f[0].ndim() == 1 ? f[0].shape(0) : -1;
    for (size_t j = 0; j <= f.size(); ++j) {
        const py::array& a = j < f.size() ? static_cast<const py::array&>(f[j]) : sec;
        if (a.ndim() != 1 || a.shape(0) != S)
            throw std::invalid_argument("plan step arrays must be 1-D of one length: kind has shape " + dims(f[0]) +
                                        ", " + (j < f.size() ? names[j] : "seconds") + " " + dims(a));
    }
    if (items.ndim() != 1) throw std::invalid_argument("plan items must be 1-D, got shape " + dims(items));
    p.steps.resize(size_t(S));
    for (py::ssize_t s = 0; s < S; ++s)
        p.steps[s] = Step{StepKind(narrow<int8_t>(f[0], s, "kind")), narrow<int32_t>(f[2], s, "device"),
                          narrow<int32_t>(f[3], s, "model"), Role(narrow<int8_t>(f[1], s, "role")),
                          f[5].data()[s], f[6].data()[s], sec.data()[s], narrow<int32_t>(f[4], s, "tp")};
    p.items.assign(items.data(), items.data() + items.shape(0));
    return p;
}

#define INPUT_ARGS                                                                                            \
    py::object experts, py::object aggregator, py::object model_costs, py::object device_memory,              \
        py::object device_overlap, py::object device_host, py::object tokens, py::object tp_efficiency
#define INPUT_CALL experts, aggregator, model_costs, device_memory, device_overlap, device_host, tokens, tp_efficiency
#define INPUT_PYARGS                                                                                          \
    py::arg("experts"), py::arg("aggregator").none(true), py::arg("model_costs"), py::arg("device_memory"),   \
        py::arg("device_overlap"), py::arg("device_host"), py::arg("tokens"), py::arg("tp_efficiency")

static py::dict make_plan_py(INPUT_ARGS, py::object strategy, py::object pause_s, py::object replicate) {
    Inputs in = make_inputs(INPUT_CALL);
    PlanOptions o;
    static const Strategy kinds[] = {Strategy::Symoe, Strategy::Reference, Strategy::Naive};
    o.strategy = kinds[to_choice(strategy, "strategy", {"symoe", "reference", "naive"})];
    o.pause_s = to_real(pause_s, "pause_s");
    o.replicate = to_flag(replicate, "replicate");
    Plan p;
    {
        py::gil_scoped_release nogil;
        p = make_plan(in.w, in.c, o);
    }
    return plan_to_dict(std::move(p));
}

static double lower_bound_py(INPUT_ARGS) {
    Inputs in = make_inputs(INPUT_CALL);
    py::gil_scoped_release nogil;  // declared after `in`, so the GIL is back before `in` is destroyed
    return lower_bound(in.w, in.c);
}

static py::dict simulate_py(py::object plan, INPUT_ARGS) {
    Inputs in = make_inputs(INPUT_CALL);
    Plan p = plan_from_dict(plan);
    Timeline t;
    {
        py::gil_scoped_release nogil;
        check_inputs(in.w, in.c);
        validate(p, in.w, in.c);
        t = simulate(p, in.w, in.c);
    }
    py::ssize_t S = py::ssize_t(t.start.size()), D = py::ssize_t(t.busy.size());
    py::dict d;
    d["start"] = to_numpy(std::move(t.start), {S});
    d["end"] = to_numpy(std::move(t.end), {S});
    d["busy"] = to_numpy(std::move(t.busy), {D});
    d["makespan"] = t.makespan;
    d["finish"] = t.finish;
    d["loads"] = t.loads;
    d["bytes_loaded"] = t.bytes_loaded;
    return d;
}

static double run_seconds_py(py::object model_cost_, py::object role_, py::object n_, py::object tp_,
                             py::object tp_efficiency_) {
    auto row = to_array<double>(model_cost_, "model_cost");
    if (row.ndim() != 1 || (row.shape(0) != kNumCost && row.shape(0) != kNumAll))
        throw std::invalid_argument("model_cost must hold the " + num(kNumCost) + " COST_COLUMNS + TOKEN_COLUMNS or the " +
                                    num(kNumAll) + " with DRAIN_COLUMNS, got shape " + dims(row));
    int64_t role = to_int<int64_t>(role_, "role"), n = to_int<int64_t>(n_, "n");
    int32_t tp = to_int<int32_t>(tp_, "tp");
    double eff = to_real(tp_efficiency_, "tp_efficiency");
    if (role != int64_t(Role::Expert) && role != int64_t(Role::Aggregate))
        throw std::invalid_argument("role must be 0 (expert) or 1 (aggregate), got " + num(role));
    if (n < 0) throw std::invalid_argument("n must be >= 0, got " + num(n));
    if (tp < 1) throw std::invalid_argument("tp must be >= 1, got " + num(tp));
    if (!(std::isfinite(eff) && eff >= 0 && eff <= 1))
        throw std::invalid_argument("tp_efficiency must be in [0, 1], got " + num(eff));
    ModelCost m = model_cost(row.data(), int(row.shape(0)), Tokens{NAN, NAN, NAN, NAN});
    check_model(m, "model_cost");
    double t = run_seconds(m, Role(role), n, tp, eff);
    if (!std::isfinite(t))  // finite figures can still overflow: a huge n over a tiny throughput
        throw std::invalid_argument("predicted seconds of " + num(n) + " requests overflow with these figures");
    return t;
}

void register_planning(py::module_& m) {
    m.def("make_plan", &make_plan_py, INPUT_PYARGS, py::arg("strategy"), py::arg("pause_s"), py::arg("replicate"));
    m.def("lower_bound", &lower_bound_py, INPUT_PYARGS);
    m.def("run_seconds", &run_seconds_py, py::arg("model_cost"), py::arg("role"), py::arg("n"), py::arg("tp") = 1,
          py::arg("tp_efficiency") = 0.0,
          "Predicted seconds of one run of n requests (the planner's and simulator's formula); model_cost is one "
          "row of COST_COLUMNS + TOKEN_COLUMNS (tokens given), optionally + DRAIN_COLUMNS (the measured form).");
    m.def("simulate", &simulate_py, py::arg("plan"), INPUT_PYARGS,
          "Checks every invariant of the plan (ValueError naming the first violation), then simulates it.");
    m.attr("COST_COLUMNS") = py::cast(std::vector<std::string>(kCostColumns, kCostColumns + kNumFigures));
    m.attr("TOKEN_COLUMNS") = py::cast(std::vector<std::string>(kCostColumns + kNumFigures, kCostColumns + kNumCost));
    m.attr("DRAIN_COLUMNS") = py::cast(drain_columns());
}
