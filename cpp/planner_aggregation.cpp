// The planner's jobs per device: experts in Johnson's order, then aggregation.
#include "planner_detail.hpp"

#include <algorithm>
#include <utility>

namespace symoe::detail {

// Jobs per device from a placement: experts by Johnson's rule, then each aggregator's work split
// evenly over `replicas` devices (least expert work first), beside its own expert job if any.
// replicas 0: each aggregator in turn (most work first) water-filled over the devices it fits, each
// device's start counting its work so far and the aggregator's load where it is not already
// resident for an expert job, so aggregation goes where its model is and spreads to idle devices
// when that pays.
std::vector<std::vector<Job>> assign(const std::vector<std::vector<Piece>>& placed, int32_t replicas,
                                     const std::vector<std::vector<int64_t>>& ex,
           const std::vector<std::vector<int64_t>>& ag, const Costs& c) {
    const int32_t D = int32_t(c.devices.size());
    const int64_t M = int64_t(c.models.size());
    std::vector<std::vector<Job>> jobs(D);
    std::vector<double> est(D, 0.0);
    auto is_agg = [&](int32_t m) { return !ag[m].empty(); };
    for (int32_t d = 0; d < D; ++d) {
        std::vector<Piece> ps = placed[d];
        auto johnson_key = [&](const Piece& x) {
            double l = c.models[x.model].load_s;
            double r = run_seconds(c.models[x.model], Role::Expert, x.end - x.begin, 1, 0);
            // Group 1 (load < run) by increasing load, then group 2 by decreasing run.
            return l < r ? std::make_pair(0, l) : std::make_pair(1, -r);
        };
        std::stable_sort(ps.begin(), ps.end(), [&](const Piece& a, const Piece& b) {
            if (is_agg(a.model) != is_agg(b.model)) return !is_agg(a.model);
            return johnson_key(a) < johnson_key(b);
        });
        for (auto& x : ps) {
            jobs[d].push_back({x.model, Role::Expert, ex[x.model].data() + x.begin, x.end - x.begin});
            est[d] += c.models[x.model].load_s + run_seconds(c.models[x.model], Role::Expert, x.end - x.begin, 1, 0);
        }
    }
    // Aggregation runs after every expert job of its device (no device ever waits on a later step
    // of its own). Aggregators whose expert job is here go first, in reverse order of those jobs,
    // so the last one loaded is still resident when its aggregation starts.
    std::vector<std::vector<Job>> agg_jobs(D);
    if (replicas == 0) {
        // Per device: seconds of loads so far and the largest model loaded; an aggregator that fits
        // beside it loads while the device generates (overlap), else after its work.
        std::vector<double> io(D, 0.0), big(D, 0.0);
        for (int32_t d = 0; d < D; ++d)
            for (auto& j : jobs[d]) { io[d] += c.models[j.model].load_s; big[d] = std::max(big[d], resident_bytes(c.models[j.model])); }
        std::vector<int32_t> gs;
        for (int32_t g = 0; g < M; ++g) if (is_agg(g)) gs.push_back(g);
        auto agg_cost = [&](int32_t g) {
            return c.models[g].load_s + run_seconds(c.models[g], Role::Aggregate, int64_t(ag[g].size()), 1, 0);
        };
        std::stable_sort(gs.begin(), gs.end(), [&](int32_t a, int32_t b) { return agg_cost(a) > agg_cost(b); });
        for (int32_t g : gs) {
            const ModelCost& mc = c.models[g];
            std::vector<int32_t> fit;
            std::vector<double> start(D, 0.0);
            std::vector<uint8_t> resident(D, 0);
            for (int32_t d = 0; d < D; ++d) {
                if (!fits(resident_bytes(mc), c.devices[d].memory_bytes)) continue;
                resident[d] = std::any_of(jobs[d].begin(), jobs[d].end(), [&](const Job& j) { return j.model == g; }) ||
                              std::any_of(agg_jobs[d].begin(), agg_jobs[d].end(), [&](const Job& j) { return j.model == g; });
                bool beside = c.devices[d].overlap_load && fits(big[d] + resident_bytes(mc), c.devices[d].memory_bytes);
                start[d] = resident[d] ? est[d] : beside ? std::max(est[d], io[d] + mc.load_s) : est[d] + mc.load_s;
                fit.push_back(d);
            }
            const int64_t n = int64_t(ag[g].size());
            // Items device d takes if every device must end by T (0 where even one item ends later).
            auto cap = [&](int32_t d, double T) {
                return max_true(n, [&](int64_t x) { return x == 0 || start[d] + run_seconds(mc, Role::Aggregate, x, 1, 0) <= T; });
            };
            auto total = [&](double T) { int64_t t = 0; for (int32_t d : fit) t += cap(d, T); return t; };
            double lo = 0, hi = 0;
            for (int32_t d : fit) hi = std::max(hi, start[d]);
            hi += run_seconds(mc, Role::Aggregate, n, 1, 0) + 1.0;
            for (int it = 0; it < 60 && hi - lo > 1e-9 * hi; ++it) {
                double mid = 0.5 * (lo + hi);
                if (total(mid) >= n) hi = mid; else lo = mid;
            }
            int64_t b = 0;
            for (int32_t d : fit) {
                int64_t take = std::min(cap(d, hi), n - b);
                if (take <= 0) continue;
                agg_jobs[d].push_back(Job{g, Role::Aggregate, ag[g].data() + b, take});
                est[d] = start[d] + run_seconds(mc, Role::Aggregate, take, 1, 0);
                if (!resident[d]) { io[d] += mc.load_s; big[d] = std::max(big[d], resident_bytes(mc)); }
                b += take;
            }
        }
    }
    for (int32_t g = 0; g < M && replicas > 0; ++g) {
        if (!is_agg(g)) continue;
        std::vector<int32_t> fit;
        for (int32_t d = 0; d < D; ++d) if (fits(resident_bytes(c.models[g]), c.devices[d].memory_bytes)) fit.push_back(d);
        std::stable_sort(fit.begin(), fit.end(), [&](int32_t a, int32_t b) { return est[a] < est[b]; });
        int64_t n = int64_t(ag[g].size()), F = std::min<int64_t>(replicas, int64_t(fit.size()));
        for (int64_t f = 0; f < F; ++f) {
            int64_t b = n * f / F, e = n * (f + 1) / F;
            if (b == e) continue;
            agg_jobs[fit[f]].push_back(Job{g, Role::Aggregate, ag[g].data() + b, e - b});
            est[fit[f]] += run_seconds(c.models[g], Role::Aggregate, e - b, 1, 0);
        }
    }
    for (int32_t d = 0; d < D; ++d) {
        auto rank = [&](const Job& a) {  // position of a's expert job from the end; none: after all
            for (size_t i = jobs[d].size(); i-- > 0;)
                if (jobs[d][i].model == a.model) return int64_t(jobs[d].size() - i);
            return int64_t(jobs[d].size() + 1);
        };
        std::stable_sort(agg_jobs[d].begin(), agg_jobs[d].end(), [&](const Job& a, const Job& b) { return rank(a) < rank(b); });
        jobs[d].insert(jobs[d].end(), agg_jobs[d].begin(), agg_jobs[d].end());
    }
    return jobs;
}

// Aggregations whose questions have every expert item on this device, in jobs up to the
// aggregator's own expert job here, run right after that job while the model is resident, instead
// of after every expert job (when memory forces the model out meanwhile, that saves a reload).
// Split items are kept in `store`. Returns false if nothing moved.
bool early_aggregation(std::vector<std::vector<Job>>& jobs, const Workload& w, std::deque<std::vector<int64_t>>& store) {
    bool moved = false;
    std::vector<int32_t> cnt(w.N), last(w.N);
    for (auto& J : jobs) {
        std::fill(cnt.begin(), cnt.end(), 0);
        for (size_t i = 0; i < J.size(); ++i)
            if (J[i].role == Role::Expert)
                for (int64_t x = 0; x < J[i].n; ++x) { int64_t q = J[i].items[x] / w.k; cnt[q]++; last[q] = int32_t(i); }
        std::vector<std::vector<Job>> after(J.size());  // jobs to insert after each position
        std::vector<Job> out;
        for (size_t a = 0; a < J.size(); ++a) {
            if (J[a].role != Role::Aggregate) continue;
            size_t pg = a;
            for (size_t i = 0; i < a; ++i) if (J[i].role == Role::Expert && J[i].model == J[a].model) pg = i;
            if (pg == a) continue;
            std::vector<int64_t> ready, rest;
            for (int64_t x = 0; x < J[a].n; ++x) {
                int64_t q = J[a].items[x];
                (cnt[q] == w.k && size_t(last[q]) <= pg ? ready : rest).push_back(q);
            }
            if (ready.empty()) continue;
            moved = true;
            store.push_back(std::move(ready));
            after[pg].push_back(Job{J[a].model, Role::Aggregate, store.back().data(), int64_t(store.back().size())});
            store.push_back(std::move(rest));
            J[a].items = store.back().data();
            J[a].n = int64_t(store.back().size());
        }
        if (!moved) continue;
        for (size_t i = 0; i < J.size(); ++i) {
            if (J[i].n > 0) out.push_back(J[i]);
            for (auto& j : after[i]) out.push_back(j);
        }
        J = std::move(out);
    }
    return moved;
}

}  // namespace symoe::detail
