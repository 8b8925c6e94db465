// The only file that knows about Python: converts NumPy arrays to pointers, releases the GIL,
// and maps std::invalid_argument to ValueError (pybind11's default translation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "planner.hpp"
#include "rng.hpp"
#include "router.hpp"
#include "simulator.hpp"

namespace py = pybind11;
using namespace symoe;

template <class T>
using carray = py::array_t<T, py::array::c_style>;

// Hands a vector's buffer to NumPy without copying.
template <class T>
static py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>(shape, heap->data(), owner);
}

static py::dict route_py(carray<int64_t> profiles, carray<int64_t> indptr, carray<int64_t> indices,
                         int64_t k, bool replace, double temperature, const std::string& weighting,
                         double softmax_temperature, double rare_threshold, uint64_t seed,
                         uint64_t question_offset, int threads, bool return_probabilities) {
    if (profiles.ndim() != 2) throw std::invalid_argument("profiles must be a 2-D (models x keywords) array");
    if (indptr.ndim() != 1 || indptr.shape(0) < 1) throw std::invalid_argument("indptr must be 1-D with length N+1 >= 1");
    if (indices.ndim() != 1) throw std::invalid_argument("indices must be 1-D");
    RouteOptions o;
    o.k = k;
    o.replace = replace;
    o.scoring.temperature = temperature;
    o.scoring.softmax_temperature = softmax_temperature;
    if (weighting == "reference") o.scoring.weighting = Weighting::Reference;
    else if (weighting == "softmax") o.scoring.weighting = Weighting::Softmax;
    else throw std::invalid_argument("weighting must be 'reference' or 'softmax', got '" + weighting + "'");
    o.rare_threshold = rare_threshold;
    o.seed = seed;
    o.question_offset = question_offset;
    o.threads = threads;
    int64_t M = profiles.shape(0), V = profiles.shape(1), N = indptr.shape(0) - 1;
    RouteResult r;
    {
        py::gil_scoped_release nogil;
        r = route(profiles.data(), M, V, indptr.data(), N, indices.data(), indices.shape(0), o,
                  return_probabilities);
    }
    py::dict d;
    d["experts"] = to_numpy(std::move(r.experts), {N, k});
    d["gamma"] = to_numpy(std::move(r.gamma), {M});
    d["counts_before_filter"] = to_numpy(std::move(r.filter.counts_before), {M});
    std::vector<bool> kept(r.filter.kept.begin(), r.filter.kept.end());
    d["kept"] = py::cast(kept);
    d["replaced"] = r.filter.replaced;
    if (return_probabilities) d["probabilities"] = to_numpy(std::move(r.probabilities), {N, M});
    return d;
}

// Model cost columns, in this order (the Python layer builds the matrix).
static const char* kCostColumns[] = {"weight_bytes", "extra_bytes", "load_s",    "unload_s",   "park_s",
                                     "wake_s",       "overhead_s",  "prefill_tps", "decode_tps", "stream_tps"};
constexpr int kNumCost = 10;

struct Inputs {
    Workload w;
    Costs c;
};

static Inputs make_inputs(const carray<int64_t>& experts, const py::object& aggregator, const carray<double>& model_costs,
                          const carray<double>& device_memory, const carray<bool>& device_overlap, const carray<double>& device_host,
                          const carray<double>& tokens, double tp_efficiency) {
    if (experts.ndim() != 2) throw std::invalid_argument("experts must be a 2-D (questions x k) array");
    if (model_costs.ndim() != 2 || model_costs.shape(1) != kNumCost)
        throw std::invalid_argument("model_costs must be M x " + std::to_string(kNumCost));
    if (device_memory.ndim() != 1 || device_overlap.ndim() != 1 || device_host.ndim() != 1 ||
        device_overlap.shape(0) != device_memory.shape(0) || device_host.shape(0) != device_memory.shape(0))
        throw std::invalid_argument("device_memory, device_overlap and device_host must be 1-D of equal length");
    if (tokens.ndim() != 1 || tokens.shape(0) != 4) throw std::invalid_argument("tokens must have 4 entries");
    Inputs in;
    in.w.N = experts.shape(0);
    in.w.k = experts.shape(1);
    in.w.experts = experts.data();
    if (!aggregator.is_none()) {
        auto a = aggregator.cast<carray<int64_t>>();
        if (a.ndim() != 1 || a.shape(0) != in.w.N)
            throw std::invalid_argument("aggregator must have one entry per question (" + std::to_string(in.w.N) + ")");
        in.w.aggregator = a.data();
    }
    for (py::ssize_t m = 0; m < model_costs.shape(0); ++m) {
        const double* r = model_costs.data(m, 0);
        ModelCost x;
        double* f[] = {&x.weight_bytes, &x.extra_bytes, &x.load_s, &x.unload_s, &x.park_s,
                       &x.wake_s, &x.overhead_s, &x.prefill_tps, &x.decode_tps, &x.stream_tps};
        for (int j = 0; j < kNumCost; ++j) *f[j] = r[j];
        in.c.models.push_back(x);
    }
    for (py::ssize_t d = 0; d < device_memory.shape(0); ++d)
        in.c.devices.push_back(Device{device_memory.data()[d], device_overlap.data()[d], device_host.data()[d]});
    in.c.tokens = Tokens{tokens.data()[0], tokens.data()[1], tokens.data()[2], tokens.data()[3]};
    in.c.tp_efficiency = tp_efficiency;
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

static Plan plan_from_dict(const py::dict& d) {
    Plan p;
    p.devices = d["devices"].cast<int32_t>();
    auto kind = d["kind"].cast<carray<int8_t>>();
    auto role = d["role"].cast<carray<int8_t>>();
    auto device = d["device"].cast<carray<int32_t>>();
    auto model = d["model"].cast<carray<int32_t>>();
    auto tp = d["tp"].cast<carray<int32_t>>();
    auto b = d["item_begin"].cast<carray<int64_t>>();
    auto e = d["item_end"].cast<carray<int64_t>>();
    auto sec = d["seconds"].cast<carray<double>>();
    auto items = d["items"].cast<carray<int64_t>>();
    py::ssize_t S = kind.size();
    for (auto* a : {(py::array*)&role, (py::array*)&device, (py::array*)&model, (py::array*)&tp, (py::array*)&b,
                    (py::array*)&e, (py::array*)&sec})
        if (a->ndim() != 1 || a->size() != S) throw std::invalid_argument("plan step arrays must all have the same length");
    p.steps.resize(S);
    for (py::ssize_t s = 0; s < S; ++s) {
        int8_t k = kind.data()[s], r = role.data()[s];
        if (k < 0 || k > 5) throw std::invalid_argument("step " + std::to_string(s) + ": unknown kind " + std::to_string(k));
        if (r < 0 || r > 1) throw std::invalid_argument("step " + std::to_string(s) + ": unknown role " + std::to_string(r));
        p.steps[s] = Step{StepKind(k), device.data()[s], model.data()[s], Role(r), b.data()[s], e.data()[s],
                          sec.data()[s], tp.data()[s]};
    }
    p.items.assign(items.data(), items.data() + items.size());
    return p;
}

#define INPUT_ARGS                                                                                                   \
    carray<int64_t> experts, py::object aggregator, carray<double> model_costs, carray<double> device_memory,       \
        carray<bool> device_overlap, carray<double> device_host, carray<double> tokens, double tp_efficiency
#define INPUT_CALL experts, aggregator, model_costs, device_memory, device_overlap, device_host, tokens, tp_efficiency
#define INPUT_PYARGS                                                                                                 \
    py::arg("experts"), py::arg("aggregator"), py::arg("model_costs"), py::arg("device_memory"),                    \
        py::arg("device_overlap"), py::arg("device_host"), py::arg("tokens"), py::arg("tp_efficiency")

static py::dict make_plan_py(INPUT_ARGS, const std::string& strategy, double pause_s, bool replicate) {
    Inputs in = make_inputs(INPUT_CALL);
    PlanOptions o;
    if (strategy == "symoe") o.strategy = Strategy::Symoe;
    else if (strategy == "reference") o.strategy = Strategy::Reference;
    else if (strategy == "naive") o.strategy = Strategy::Naive;
    else throw std::invalid_argument("strategy must be 'symoe', 'reference' or 'naive', got '" + strategy + "'");
    if (!std::isfinite(pause_s) || pause_s < 0) throw std::invalid_argument("pause_s must be finite and >= 0");
    o.pause_s = pause_s;
    o.replicate = replicate;
    Plan p;
    {
        py::gil_scoped_release nogil;
        p = make_plan(in.w, in.c, o);
    }
    return plan_to_dict(std::move(p));
}

static double lower_bound_py(INPUT_ARGS) {
    Inputs in = make_inputs(INPUT_CALL);
    py::gil_scoped_release nogil;
    return lower_bound(in.w, in.c);
}

static py::dict simulate_py(const py::dict& plan, INPUT_ARGS) {
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
    d["loads"] = t.loads;
    d["bytes_loaded"] = t.bytes_loaded;
    return d;
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "symoe C++ core: routing, planning and simulation";
    m.def("route", &route_py, py::arg("profiles"), py::arg("indptr"), py::arg("indices"), py::arg("k"),
          py::arg("replace"), py::arg("temperature"), py::arg("weighting"), py::arg("softmax_temperature"),
          py::arg("rare_threshold"), py::arg("seed"), py::arg("question_offset"), py::arg("threads"),
          py::arg("return_probabilities"));
    m.def("uniform", [](uint64_t s, uint64_t q, uint32_t st, uint32_t sl) { return uniform(s, q, st, sl); }, py::arg("seed"), py::arg("question"), py::arg("stream"), py::arg("slot"),
          "The counter-based uniform used for every draw (exposed for reference implementations).");
    m.def("make_plan", &make_plan_py, INPUT_PYARGS, py::arg("strategy"), py::arg("pause_s"), py::arg("replicate"));
    m.def("lower_bound", &lower_bound_py, INPUT_PYARGS);
    m.def("simulate", &simulate_py, py::arg("plan"), INPUT_PYARGS,
          "Checks every invariant of the plan (ValueError naming the first violation), then simulates it.");
    std::vector<std::string> cols(kCostColumns, kCostColumns + kNumCost);
    m.attr("COST_COLUMNS") = py::cast(cols);
}
