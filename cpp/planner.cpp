// The planner's candidates (placements x aggregation spreads, simulated, the best kept), the
// reference and naive schedules, and make_plan; its parts are declared in planner_detail.hpp.
#include "planner.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <exception>
#include <limits>
#include <thread>

#include "check.hpp"
#include "parallel.hpp"
#include "planner_detail.hpp"
#include "simulator.hpp"

namespace symoe {

namespace detail {

// Expert items up to which the planner tries extra per-device orders of the winning plan.
constexpr int64_t kSmallWorkload = 100000;
// Expert items up to which the winning placement is improved by local search, and its simulations.
constexpr int64_t kLocalSearchItems = 20000;
constexpr int kLocalSearchTries = 300;

// Local search on a placement: a piece moved to another device that holds no piece of its model,
// or two pieces of different models on two devices swapped, whenever the simulated plan gets
// faster (first improvement, in a fixed order, at most kLocalSearchTries simulations: the result
// depends on the inputs only). `best_t`: the placement's makespan, lowered with it.
void local_search(std::vector<std::vector<Piece>>& placed, int32_t replicas, const Workload& w, const Costs& c,
                  const std::vector<std::vector<int64_t>>& ex, const std::vector<std::vector<int64_t>>& ag,
                  double& best_t) {
    const int32_t D = int32_t(c.devices.size());
    int tries = 0;
    auto holds = [&](const std::vector<Piece>& dev, int32_t m) {
        return std::any_of(dev.begin(), dev.end(), [&](const Piece& x) { return x.model == m; });
    };
    auto fit = [&](int32_t m, int32_t d) { return fits(resident_bytes(c.models[m]), c.devices[d].memory_bytes); };
    auto better = [&](const std::vector<std::vector<Piece>>& q) {
        ++tries;
        auto jobs = assign(q, replicas, ex, ag, c);
        if (jobs_floor(jobs, c) >= best_t) return false;
        double t = simulate(emit_plan(jobs, c), w, c).makespan;
        if (!(t < best_t * (1 - 1e-12))) return false;
        best_t = t;
        placed = q;
        return true;
    };
    for (bool improved = true; improved && tries < kLocalSearchTries;) {
        improved = false;
        for (int32_t a = 0; a < D && !improved && tries < kLocalSearchTries; ++a)
            for (size_t i = 0; i < placed[a].size() && !improved && tries < kLocalSearchTries; ++i) {
                const int32_t m = placed[a][i].model;
                for (int32_t b = 0; b < D && !improved && tries < kLocalSearchTries; ++b) {
                    if (b == a || !fit(m, b) || holds(placed[b], m)) continue;
                    auto q = placed;
                    q[b].push_back(q[a][i]);
                    q[a].erase(q[a].begin() + int64_t(i));
                    improved = better(q);
                    for (size_t j = 0; j < placed[b].size() && !improved && tries < kLocalSearchTries; ++j) {
                        const int32_t n = placed[b][j].model;
                        if (b < a || n == m || !fit(n, a) || holds(placed[a], n)) continue;
                        auto s = placed;
                        std::swap(s[a][i], s[b][j]);
                        improved = better(s);
                    }
                }
            }
    }
}

Plan plan_symoe(const Workload& w, const Costs& c, const PlanOptions& o) {
    const int32_t D = int32_t(c.devices.size());
    const int64_t M = int64_t(c.models.size());
    auto ex = group_experts(w, M);
    auto ag = group_aggregation(w, M);
    std::vector<int32_t> order;
    for (int32_t m = 0; m < M; ++m) if (!ex[m].empty()) order.push_back(m);
    std::vector<double> work(M);
    for (int32_t m = 0; m < M; ++m) work[m] = run_seconds(c.models[m], Role::Expert, ex[m].size(), 1, 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return work[a] > work[b]; });

    // Candidates are cheap to simulate, so the planner keeps the best predicted one: whole-model
    // LPT vs the replicating balanced fill, and how many devices share the aggregation.
    std::vector<std::vector<std::vector<Piece>>> placements{lpt_placement(order, ex, ag, work, c, false)};
    auto add = [&](std::vector<std::vector<Piece>>&& pl) {  // a placement not seen yet
        auto same = [](const Piece& a, const Piece& b) { return a.model == b.model && a.begin == b.begin && a.end == b.end; };
        for (auto& q : placements) {
            bool eq = true;
            for (int32_t d = 0; d < D && eq; ++d)
                eq = q[d].size() == pl[d].size() && std::equal(q[d].begin(), q[d].end(), pl[d].begin(), same);
            if (eq) return;
        }
        placements.push_back(std::move(pl));
    };
    std::vector<std::vector<Piece>> balanced(D);
    if (D > 1 && o.replicate && balanced_placement(order, ex, work, c, balanced)) add(std::move(balanced));
    const size_t first_kind = placements.size();  // the plain and balanced placements come first
    if (D > 1) {
        add(lpt_placement(order, ex, ag, work, c, true));
        // Where loads rival the work, LPT by work and load together balances the devices better.
        std::vector<int32_t> by_total = order;
        std::stable_sort(by_total.begin(), by_total.end(), [&](int32_t a, int32_t b) {
            return work[a] + c.models[a].load_s > work[b] + c.models[b].load_s;
        });
        add(lpt_placement(by_total, ex, ag, work, c, false));
        add(lpt_placement(by_total, ex, ag, work, c, true));
    }
    // Each candidate is built and simulated on its own thread (they are independent); only its
    // makespan is kept, and the winner, the first candidate with the smallest makespan in the
    // order below as if they ran one by one, is built again: the plan never depends on the threads.
    struct Candidate { size_t placement; int32_t replicas; };
    auto evaluate = [&](const std::vector<Candidate>& cs, double cutoff) {  // cutoff: makespans worth knowing
        std::vector<double> t(cs.size(), std::numeric_limits<double>::infinity());
        std::vector<std::exception_ptr> err(cs.size());
        std::atomic<size_t> next{0};
        auto work_on = [&] {
            for (size_t i; (i = next.fetch_add(1)) < cs.size();) {
                try {
                    auto jobs = assign(placements[cs[i].placement], cs[i].replicas, ex, ag, c);
                    if (jobs_floor(jobs, c) < cutoff) t[i] = simulate(emit_plan(jobs, c), w, c).makespan;
                } catch (...) { err[i] = std::current_exception(); }
            }
        };
        size_t n_threads = std::min<size_t>(cs.size(), size_t(resolve_threads(0)));
        std::vector<std::thread> pool;
        for (size_t k = 1; k < n_threads; ++k) pool.emplace_back(work_on);
        work_on();
        for (auto& th : pool) th.join();
        for (auto& e : err) if (e) std::rethrow_exception(e);  // the first candidate's error, as run in order
        return t;
    };
    double best_t = std::numeric_limits<double>::infinity();
    Candidate winner{0, D};
    auto pick = [&](const std::vector<Candidate>& cs) {  // true if one of cs beats the best so far
        std::vector<double> t = evaluate(cs, best_t);
        bool better = false;
        for (size_t i = 0; i < cs.size(); ++i)
            if (t[i] < best_t) { best_t = t[i]; winner = cs[i]; better = true; }
        return better;
    };
    // The better of plain LPT and the balanced fill, aggregation evenly over 1..D devices; then
    // the memory-aware placement, and aggregation water-filled by residency and load cost on every
    // placement. The best of all is kept, so each candidate can only improve the plan.
    std::vector<Candidate> first;
    for (size_t i = 0; i < first_kind; ++i) first.push_back({i, D});
    pick(first);
    const size_t best_placement = winner.placement;
    std::vector<Candidate> rest;
    for (int32_t r = D - 1; r >= 1; --r) rest.push_back({best_placement, r});
    for (size_t i = first_kind; i < placements.size(); ++i) rest.push_back({i, D});
    bool any_agg = false;
    for (auto& g : ag) any_agg |= !g.empty();
    if (any_agg && D > 1)
        for (size_t i = 0; i < placements.size(); ++i) rest.push_back({i, 0});
    pick(rest);
    std::vector<std::vector<Piece>> placed = placements[winner.placement];
    if (D > 1 && w.N * w.k <= kLocalSearchItems) local_search(placed, winner.replicas, w, c, ex, ag, best_t);
    auto best_jobs = assign(placed, winner.replicas, ex, ag, c);
    Plan best = emit_plan(best_jobs, c);
    // The winner with aggregations pulled forward to where their aggregator is resident.
    std::deque<std::vector<int64_t>> store;
    auto early = best_jobs;
    if (w.aggregator && early_aggregation(early, w, store)) {
        Plan p = emit_plan(early, c);
        double t = simulate(p, w, c).makespan;
        if (t < best_t) { best = std::move(p); best_t = t; best_jobs = std::move(early); }
    }
    // An aggregator loads while the last expert job generates only if it fits beside that job's
    // model: each expert job that does is tried last (small workloads; each try is simulated).
    if (w.aggregator && w.N * w.k <= kSmallWorkload)
        for (int32_t d = 0; d < D; ++d) {
            size_t fa = 0;
            while (fa < best_jobs[d].size() && best_jobs[d][fa].role == Role::Expert) ++fa;
            if (fa == best_jobs[d].size() || fa < 2) continue;
            const double g_bytes = resident_bytes(c.models[best_jobs[d][fa].model]);
            for (size_t j = 0; j + 1 < fa; ++j) {
                if (!fits(resident_bytes(c.models[best_jobs[d][j].model]) + g_bytes, c.devices[d].memory_bytes)) continue;
                auto trial = best_jobs;
                Job x = trial[d][j];
                trial[d].erase(trial[d].begin() + int64_t(j));
                trial[d].insert(trial[d].begin() + int64_t(fa - 1), x);
                Plan p = emit_plan(trial, c);
                double t = simulate(p, w, c).makespan;
                if (t < best_t) { best = std::move(p); best_t = t; best_jobs = std::move(trial); }
            }
        }
    // Few questions on several devices: one model at a time, tensor-parallel over the widest group
    // of devices that holds it (the reference's schedule without its pauses) can be fastest.
    // It runs one step at a time, so it takes at least every model's load and fastest runs: built
    // and simulated only when that leaves room below the best plan.
    double serial = 0;
    for (int32_t m = 0; m < M; ++m)
        if (!ex[m].empty() || !ag[m].empty())
            serial += c.models[m].load_s + run_seconds(c.models[m], Role::Expert, int64_t(ex[m].size()), D, c.tp_efficiency) +
                      run_seconds(c.models[m], Role::Aggregate, int64_t(ag[m].size()), D, c.tp_efficiency);
    if (D > 1 && c.tp_efficiency > 0 && o.replicate && serial < best_t) {
        Plan p = plan_reference(w, c, 0.0, false);
        if (simulate(p, w, c).makespan < best_t) best = std::move(p);
    }
    return best;
}

// The widest run of consecutive devices [first, first + tp) each of which holds 1/tp of `bytes`,
// the first of the widest; O(D): the widest run whose smallest memory is device i's spans the
// devices around i with at least its memory (largest rectangle under a histogram).
std::pair<int32_t, int32_t> widest_group(double bytes, const std::vector<Device>& dev) {
    const int32_t D = int32_t(dev.size());
    std::vector<int32_t> left(D), right(D), stack;
    for (int32_t i = 0; i < D; ++i) {  // left[i]: nearest j < i with less memory (-1 if none)
        while (!stack.empty() && dev[stack.back()].memory_bytes >= dev[i].memory_bytes) stack.pop_back();
        left[i] = stack.empty() ? -1 : stack.back();
        stack.push_back(i);
    }
    stack.clear();
    for (int32_t i = D; i-- > 0;) {  // right[i]: nearest j > i with less memory (D if none)
        while (!stack.empty() && dev[stack.back()].memory_bytes >= dev[i].memory_bytes) stack.pop_back();
        right[i] = stack.empty() ? D : stack.back();
        stack.push_back(i);
    }
    int32_t tp = 1;
    for (int32_t i = 0; i < D; ++i) {
        int32_t width = right[i] - left[i] - 1;
        if (width > tp && fits(bytes / width, dev[i].memory_bytes)) tp = width;
    }
    for (int32_t d = 0, run = 0; d < D; ++d) {
        run = fits(bytes / tp, dev[d].memory_bytes) ? run + 1 : 0;
        if (run == tp) return {d - tp + 1, tp};
    }
    return {0, 1};  // unreachable: check_inputs() found a device that holds every used model
}

// pauses false: no pause steps (a pause spans every device, so even a 0 s one holds them all up).
Plan plan_reference(const Workload& w, const Costs& c, double pause_s, bool pauses) {
    const int32_t D = int32_t(c.devices.size());
    const int64_t M = int64_t(c.models.size());
    auto ex = group_experts(w, M);
    auto ag = group_aggregation(w, M);
    Plan p;
    p.devices = D;
    auto first_seen = [&](const int64_t* ids, int64_t n) {
        std::vector<int32_t> seen, mark(M, 0);
        for (int64_t i = 0; i < n; ++i)
            if (ids[i] >= 0 && !mark[ids[i]]) { mark[ids[i]] = 1; seen.push_back(int32_t(ids[i])); }
        return seen;
    };
    // Each model on the widest run of consecutive devices that holds its shards (all of them when
    // the devices are alike), the first such run when several are as wide.
    auto one = [&](int32_t m, Role r, const std::vector<int64_t>& items) {
        auto [first, tp] = widest_group(resident_bytes(c.models[m]), c.devices);
        Step s = make_step(StepKind::Load, first, m); s.tp = tp; p.steps.push_back(s);
        emit_run(p, first, Job{m, r, items.data(), int64_t(items.size())}, tp);
        s.kind = StepKind::Unload; p.steps.push_back(s);
    };
    for (int32_t m : first_seen(w.experts, w.N * w.k)) {
        one(m, Role::Expert, ex[m]);
        if (!pauses) continue;
        Step pause = make_step(StepKind::Pause, 0, -1);
        pause.seconds = pause_s;
        pause.tp = D;
        p.steps.push_back(pause);
    }
    if (w.aggregator)
        for (int32_t g : first_seen(w.aggregator, w.N)) one(g, Role::Aggregate, ag[g]);
    return p;
}

Plan plan_naive(const Workload& w, const Costs& c) {
    const int32_t D = int32_t(c.devices.size());
    const int64_t M = int64_t(c.models.size());
    Plan p;
    p.devices = D;
    // With sleep mode a model is parked in host memory after use and woken when used again.
    std::vector<std::vector<uint8_t>> parked(D, std::vector<uint8_t>(M, 0));
    std::vector<double> host(D, 0.0);
    for (int64_t q = 0; q < w.N; ++q) {
        // Question q on device q mod D; a model that does not fit there on the next one it fits.
        auto one = [&](int32_t m, Role r, int64_t item) {
            const ModelCost& mc = c.models[m];
            int32_t d = int32_t(q % D);
            while (!fits(resident_bytes(mc), c.devices[d].memory_bytes)) d = (d + 1) % D;
            if (parked[d][m]) { p.steps.push_back(make_step(StepKind::Wake, d, m)); parked[d][m] = 0; host[d] -= mc.weight_bytes; }
            else p.steps.push_back(make_step(StepKind::Load, d, m));
            emit_run(p, d, Job{m, r, &item, 1});
            parked[d][m] = park_or_unload(p, d, m, true, c, host[d]);
        };
        for (int64_t j = 0; j < w.k; ++j) one(int32_t(w.experts[q * w.k + j]), Role::Expert, q * w.k + j);
        if (w.aggregator && w.aggregator[q] >= 0) one(int32_t(w.aggregator[q]), Role::Aggregate, q);
    }
    return p;
}


}  // namespace detail

Plan make_plan(const Workload& w, const Costs& c, const PlanOptions& o) {
    using namespace detail;
    check_inputs(w, c);
    SYMOE_CHECK(std::isfinite(o.pause_s) && o.pause_s >= 0, "pause_s must be finite and >= 0, got " + num(o.pause_s));
    switch (o.strategy) {
        case Strategy::Reference: return plan_reference(w, c, o.pause_s, true);
        case Strategy::Naive: return plan_naive(w, c);
        default: return plan_symoe(w, c, o);
    }
}

}  // namespace symoe
