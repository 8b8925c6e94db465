// The planner's lower bound on the makespan of every valid plan.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "planner.hpp"

namespace symoe {

// Every term holds for any plan validate() accepts, tensor-parallel steps included. Facts used:
// - a run of n items with tp t takes o + max(n u, f) / s(t) (u: seconds of work per item, f: the
//   one-sequence floor, s(t) = 1 + (t - 1) eff <= s_max = s(D)), so it is never shorter than
//   fastest(n), and it holds t compute lanes for t times that long, never less than the same
//   run on one device (t / s(t) >= 1 as eff <= 1), and one-device runs are subadditive in n:
//   the runs of a model's items hold the compute lanes for at least single(all its items);
// - a run needs its model loaded (a wake needs a load before it), so no compute lane works before
//   the shortest load ends, and no run of model m starts before load_s(m);
// - each used model is loaded at least once, and the load that first brings it is followed by a
//   run of it; loads on a device's I/O lane do not overlap;
// - an aggregation starts after every expert run of its question.
double lower_bound(const Workload& w, const Costs& c) {
    check_inputs(w, c);
    const int64_t M = int64_t(c.models.size());
    const int32_t Dn = int32_t(c.devices.size());
    const double D = double(Dn), eff = c.tp_efficiency;
    const bool speedup = Dn > 1 && eff > 0;  // else every run takes at least its one-device time
    std::vector<int64_t> ne(M, 0), na(M, 0), ne_agg(M, 0);  // expert items, aggregations, expert items of aggregated questions
    for (int64_t q = 0; q < w.N; ++q) {
        bool agg = w.aggregator && w.aggregator[q] >= 0;
        if (agg) na[w.aggregator[q]]++;
        for (int64_t j = 0; j < w.k; ++j) {
            ne[w.experts[q * w.k + j]]++;
            if (agg) ne_agg[w.experts[q * w.k + j]]++;
        }
    }
    auto single = [&](int64_t m, Role r, int64_t n) { return run_seconds(c.models[m], r, n, 1, 0); };
    auto fastest = [&](int64_t m, Role r, int64_t n) { return run_seconds(c.models[m], r, n, Dn, eff); };
    // n items' seconds of generation, without overhead and floor, however they are split into runs
    auto work = [&](int64_t m, Role r, int64_t n) { return run_work(c.models[m], r, n); };
    const double inf = std::numeric_limits<double>::infinity();
    double area = 0, area_agg_experts = 0, loads = 0, min_load = inf, min_run = inf, min_agg = inf, per_model = 0;
    for (int64_t m = 0; m < M; ++m) {
        if (ne[m] + na[m] == 0) continue;
        const ModelCost& mc = c.models[m];
        area += single(m, Role::Expert, ne[m]) + single(m, Role::Aggregate, na[m]);
        area_agg_experts += single(m, Role::Expert, ne_agg[m]);
        loads += mc.load_s;
        min_load = std::min(min_load, mc.load_s);
        double shortest = inf;  // m's shortest possible run, in any role it has
        if (ne[m]) shortest = std::min(shortest, fastest(m, Role::Expert, 1));
        if (na[m]) {
            shortest = std::min(shortest, fastest(m, Role::Aggregate, 1));
            min_agg = std::min(min_agg, fastest(m, Role::Aggregate, 1));
        }
        min_run = std::min(min_run, shortest);
        // After its load, m's runs hold the compute lanes for single(...) seconds in all; the
        // device that carries the largest share of that work (each run counted once per device
        // it spans, at its tp speed) carries at least 1/D of it.
        double u = work(m, Role::Expert, ne[m]) + work(m, Role::Aggregate, na[m]);
        double tail = std::max(shortest, u > 0 ? mc.overhead_s + u / D : 0.0);
        if (!speedup) {  // no tp speed-up: the device with the most of m's items holds ceil(n / D) of one role
            auto share = [&](int64_t n) { return int64_t(std::ceil(double(n) / D)); };
            tail = std::max({tail, single(m, Role::Expert, share(ne[m])), single(m, Role::Aggregate, share(na[m]))});
        }
        per_model = std::max(per_model, mc.load_s + tail);
    }
    // Compute lanes are idle until the first load ends, then hold all the work.
    double lb = std::max(min_load + area / D, per_model);
    // The same on the devices a set of models can use at all: a device that holds no shard of m,
    // in any group of consecutive devices, never runs m. For each distinct set U of such devices,
    // the models confined to U put their work on U's lanes (up to 64 devices, 256 distinct sets).
    if (Dn <= 64) {
        std::vector<uint64_t> mask(M, 0);
        for (int64_t m = 0; m < M; ++m) {
            if (ne[m] + na[m] == 0) continue;
            const double bytes = resident_bytes(c.models[m]);
            for (int32_t t = 1; t <= Dn; ++t)  // runs of >= t consecutive devices holding bytes / t each
                for (int32_t d = 0, run = 0; d <= Dn; ++d) {
                    if (d < Dn && fits(bytes / t, c.devices[d].memory_bytes)) { ++run; continue; }
                    if (run >= t) for (int32_t e = d - run; e < d; ++e) mask[m] |= uint64_t(1) << e;
                    run = 0;
                }
        }
        std::vector<uint64_t> sets;
        for (int64_t m = 0; m < M; ++m) if (mask[m]) sets.push_back(mask[m]);
        std::sort(sets.begin(), sets.end());
        sets.erase(std::unique(sets.begin(), sets.end()), sets.end());
        if (sets.size() <= 256)
            for (uint64_t U : sets) {
                double a = 0, first = inf;
                for (int64_t m = 0; m < M; ++m)
                    if (mask[m] && (mask[m] & ~U) == 0) {
                        a += single(m, Role::Expert, ne[m]) + single(m, Role::Aggregate, na[m]);
                        first = std::min(first, c.models[m].load_s);
                    }
                lb = std::max(lb, first + a / double(__builtin_popcountll(U)));
            }
    }
    // The loads that first bring each model: the device with the most of them ends its last one
    // after loads / D at least, and a run of that model follows (any model, any role).
    lb = std::max(lb, loads / D + min_run);
    // The expert runs of aggregated questions end after min_load + their work / D; the question
    // that ends last then aggregates.
    if (min_agg < inf) lb = std::max(lb, min_load + area_agg_experts / D + min_agg);
    // Devices without load/generate overlap run their own loads on their one lane. Let S be the
    // models some such device loads: the lanes hold all the work and S's loads, (area + L_S) / D;
    // the other models are loaded and so run by devices with overlap, whose compute lanes hold at
    // least 1/s_max of those models' one-device time after min_load. The bound is the smaller of
    // the two over every S, relaxed to fractions of models (a fractional knapsack: models enter S
    // by most work per second of load first until the two terms meet).
    int64_t with_overlap = 0;
    for (auto& d : c.devices) with_overlap += d.overlap_load;
    if (with_overlap < Dn) {
        if (with_overlap == 0) {
            lb = std::max(lb, (loads + area) / D);
        } else {
            const double s_max = 1.0 + (D - 1) * eff, cap = s_max * double(with_overlap);
            struct WL { double ratio, work, load; };  // per used model: one-device work, load
            std::vector<WL> wl;
            for (int64_t m = 0; m < M; ++m) {
                double wm = single(m, Role::Expert, ne[m]) + single(m, Role::Aggregate, na[m]), lm = c.models[m].load_s;
                if ((ne[m] + na[m]) && wm + lm > 0) wl.push_back({lm > 0 ? wm / lm : inf, wm, lm});
            }
            std::sort(wl.begin(), wl.end(), [](const WL& a, const WL& b) { return a.ratio > b.ratio; });
            double A = min_load + area / cap, B = area / D;  // with S empty
            for (auto [ratio, wm, lm] : wl) {
                if (A <= B) break;
                double dA = wm / cap, dB = lm / D;  // all of m in S
                if (A - dA >= B + dB) { A -= dA; B += dB; continue; }
                double x = (A - B) / (dA + dB);  // the fraction where they meet
                A -= x * dA;
                B += x * dB;
                break;
            }
            lb = std::max(lb, std::max(A, B));
        }
    }
    return lb;
}

}  // namespace symoe
