// Python bindings of routing: route() and the counter-based uniform every draw uses. Arguments go
// through convert.hpp (a ValueError naming the argument and value); the GIL is released while routing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "convert.hpp"
#include "rng.hpp"
#include "router.hpp"

namespace py = pybind11;
using namespace symoe;
using namespace symoe_py;

static py::dict route_py(py::object profiles_, py::object indptr_, py::object indices_, py::object k,
                         py::object replace, py::object temperature, py::object weighting,
                         py::object softmax_temperature, py::object rare_threshold, py::object seed,
                         py::object question_offset, py::object threads, py::object return_probabilities) {
    auto profiles = to_array<int64_t>(profiles_, "profiles");
    auto indptr = to_array<int64_t>(indptr_, "indptr");
    auto indices = to_array<int64_t>(indices_, "indices");
    if (profiles.ndim() != 2)
        throw std::invalid_argument("profiles must be a 2-D (models x keywords) array, got shape " + dims(profiles));
    if (indptr.ndim() != 1 || indptr.shape(0) < 1)
        throw std::invalid_argument("indptr must be 1-D with length N+1 >= 1, got shape " + dims(indptr));
    if (indices.ndim() != 1) throw std::invalid_argument("indices must be 1-D, got shape " + dims(indices));
    RouteOptions o;
    o.k = to_int<int64_t>(k, "k");
    o.replace = to_flag(replace, "replace");
    o.scoring.temperature = to_real(temperature, "temperature");
    o.scoring.weighting = to_choice(weighting, "weighting", {"reference", "softmax"}) ? Weighting::Softmax
                                                                                       : Weighting::Reference;
    o.scoring.softmax_temperature = to_real(softmax_temperature, "softmax_temperature");
    o.rare_threshold = to_real(rare_threshold, "rare_threshold");
    o.seed = to_int<uint64_t>(seed, "seed");
    o.question_offset = to_int<uint64_t>(question_offset, "question_offset");
    o.threads = to_int<int>(threads, "threads");
    bool want_p = to_flag(return_probabilities, "return_probabilities");
    int64_t M = profiles.shape(0), V = profiles.shape(1), N = indptr.shape(0) - 1;
    RouteResult r;
    {
        py::gil_scoped_release nogil;
        r = route(profiles.data(), M, V, indptr.data(), N, indices.data(), indices.shape(0), o, want_p);
    }
    py::dict d;
    d["experts"] = to_numpy(std::move(r.experts), {N, o.k});
    d["gamma"] = to_numpy(std::move(r.gamma), {M});
    d["counts_before_filter"] = to_numpy(std::move(r.filter.counts_before), {M});
    std::vector<bool> kept(r.filter.kept.begin(), r.filter.kept.end());
    d["kept"] = py::cast(kept);
    d["replaced"] = r.filter.replaced;
    if (want_p) d["probabilities"] = to_numpy(std::move(r.probabilities), {N, M});
    return d;
}

void register_routing(py::module_& m) {
    m.def("route", &route_py, py::arg("profiles"), py::arg("indptr"), py::arg("indices"), py::arg("k"),
          py::arg("replace"), py::arg("temperature"), py::arg("weighting"), py::arg("softmax_temperature"),
          py::arg("rare_threshold"), py::arg("seed"), py::arg("question_offset"), py::arg("threads"),
          py::arg("return_probabilities"));
    m.def(
        "uniform",
        [](py::object s, py::object q, py::object st, py::object sl) {
            return uniform(to_int<uint64_t>(s, "seed"), to_int<uint64_t>(q, "question"),
                           to_int<uint32_t>(st, "stream"), to_int<uint32_t>(sl, "slot"));
        },
        py::arg("seed"), py::arg("question"), py::arg("stream"), py::arg("slot"),
        "The counter-based uniform used for every draw (exposed for reference implementations).");
    m.attr("MAX_K") = kMaxK;
}
