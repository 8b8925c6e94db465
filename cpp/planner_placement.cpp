// The planner's placement of expert work on devices: wrap-around fill and LPT.
#include "planner_detail.hpp"

#include <algorithm>

namespace symoe::detail {

// Wrap-around fill at makespan target T; returns false if the work does not fit on the devices.
bool fill(const std::vector<int32_t>& order, const std::vector<std::vector<int64_t>>& groups, const Costs& c,
          double T, std::vector<std::vector<Piece>>* out) {
    const int32_t D = int32_t(c.devices.size());
    std::vector<std::vector<Piece>> dev(D);
    int32_t d = 0;
    double comp = 0, io = 0, first_load = 0;
    for (int32_t m : order) {
        const ModelCost& mc = c.models[m];
        int64_t n = int64_t(groups[m].size()), done = 0;
        while (done < n) {
            if (d >= D) return false;
            const Device& dv = c.devices[d];
            bool fits_mem = fits(resident_bytes(mc), dv.memory_bytes);
            auto est = [&](int64_t take) {
                double r = run_seconds(mc, Role::Expert, take, 1, 0);
                double fl = dev[d].empty() ? mc.load_s : first_load;
                return dv.overlap_load ? std::max(fl + comp + r, io + mc.load_s + r) : io + mc.load_s + comp + r;
            };
            int64_t take = fits_mem ? max_true(n - done, [&](int64_t x) { return est(x) <= T; }) : 0;
            if (take > 0) {
                if (dev[d].empty()) first_load = mc.load_s;
                comp += run_seconds(mc, Role::Expert, take, 1, 0);
                io += mc.load_s;
                dev[d].push_back({m, done, done + take});
                done += take;
            }
            if (done < n) { ++d; comp = io = first_load = 0; }
        }
    }
    if (out) *out = std::move(dev);
    return true;
}

// Wrap-around fill at the smallest feasible target found by bisection (balanced, replicating).
bool balanced_placement(const std::vector<int32_t>& order, const std::vector<std::vector<int64_t>>& ex,
                        const std::vector<double>& work, const Costs& c, std::vector<std::vector<Piece>>& placed) {
    double hi = 0, lo = 0;
    for (int32_t m : order) hi += work[m] + c.models[m].load_s;
    hi = hi * 1.000001 + 1e-9;
    if (!fill(order, ex, c, hi, nullptr)) return false;  // memory-heterogeneous corner
    for (int it = 0; it < 60 && hi - lo > 1e-6 * hi; ++it) {
        double mid = 0.5 * (lo + hi);
        if (fill(order, ex, c, mid, nullptr)) hi = mid; else lo = mid;
    }
    return fill(order, ex, c, hi, &placed);
}

// LPT: each model whole on the least-loaded device it fits. Memory-aware variant: the models that
// fit the fewest devices first, devices start loaded with the aggregation work that only they can
// take (shared over the devices each aggregator fits), and ties go to the device with less memory,
// so flexible models leave the large devices to the models only those hold.
std::vector<std::vector<Piece>> lpt_placement(std::vector<int32_t> order, const std::vector<std::vector<int64_t>>& ex,
                                              const std::vector<std::vector<int64_t>>& ag, const std::vector<double>& work,
                                              const Costs& c, bool memory_aware) {
    const int32_t D = int32_t(c.devices.size());
    std::vector<std::vector<Piece>> placed(D);
    std::vector<double> load(D, 0.0);
    auto fit = [&](int32_t m, int32_t d) { return fits(resident_bytes(c.models[m]), c.devices[d].memory_bytes); };
    if (memory_aware) {
        std::vector<int32_t> n_fit(c.models.size(), 0);
        for (size_t m = 0; m < c.models.size(); ++m)
            for (int32_t d = 0; d < D; ++d) n_fit[m] += fit(int32_t(m), d);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return n_fit[a] < n_fit[b]; });
        for (size_t g = 0; g < c.models.size(); ++g) {
            if (ag[g].empty() || n_fit[g] == 0) continue;
            double share = (c.models[g].load_s + run_seconds(c.models[g], Role::Aggregate, int64_t(ag[g].size()), 1, 0)) / n_fit[g];
            for (int32_t d = 0; d < D; ++d) if (fit(int32_t(g), d)) load[d] += share;
        }
    }
    for (int32_t m : order) {
        int32_t best = -1;
        for (int32_t d = 0; d < D; ++d) {
            if (!fit(m, d)) continue;
            if (best < 0 || load[d] < load[best] ||
                (memory_aware && load[d] == load[best] && c.devices[d].memory_bytes < c.devices[best].memory_bytes))
                best = d;
        }
        placed[best].push_back({m, 0, int64_t(ex[m].size())});
        load[best] += work[m] + c.models[m].load_s;
    }
    return placed;
}

}  // namespace symoe::detail
