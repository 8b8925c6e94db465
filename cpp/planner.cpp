#include "planner.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <exception>
#include <thread>
#include <limits>
#include <stdexcept>

#include "check.hpp"
#include "parallel.hpp"
#include "simulator.hpp"

namespace symoe {

namespace {

struct Job {
    int32_t model;
    Role role;
    const int64_t* items;  // into the grouped item lists
    int64_t n;
};

// Items grouped by model with a counting sort, preserving question order inside each group.
std::vector<std::vector<int64_t>> group_experts(const Workload& w, int64_t M) {
    std::vector<int64_t> cnt(M, 0);
    for (int64_t i = 0; i < w.N * w.k; ++i) cnt[w.experts[i]]++;
    std::vector<std::vector<int64_t>> g(M);
    for (int64_t m = 0; m < M; ++m) g[m].reserve(cnt[m]);
    for (int64_t i = 0; i < w.N * w.k; ++i) g[w.experts[i]].push_back(i);
    return g;
}

std::vector<std::vector<int64_t>> group_aggregation(const Workload& w, int64_t M) {
    std::vector<std::vector<int64_t>> g(M);
    if (!w.aggregator) return g;
    for (int64_t q = 0; q < w.N; ++q)
        if (w.aggregator[q] >= 0) g[w.aggregator[q]].push_back(q);
    return g;
}

Step make_step(StepKind k, int32_t d, int32_t m) { return Step{k, d, m, Role::Expert, 0, 0, 0.0, 1}; }

void emit_run(Plan& p, int32_t d, const Job& j, int32_t tp = 1) {
    Step s = make_step(StepKind::Run, d, j.model);
    s.role = j.role;
    s.item_begin = int64_t(p.items.size());
    p.items.insert(p.items.end(), j.items, j.items + j.n);
    s.item_end = int64_t(p.items.size());
    s.tp = tp;
    p.steps.push_back(s);
}

// Takes model m off device d: parked in host memory when it is needed again, sleep mode is
// supported and the host budget allows, else unloaded. Returns true if parked.
bool park_or_unload(Plan& p, int32_t d, int32_t m, bool again, const Costs& c, double& host) {
    const ModelCost& mc = c.models[m];
    if (again && mc.park_s >= 0 && fits(host + mc.weight_bytes, c.devices[d].host_bytes)) {
        p.steps.push_back(make_step(StepKind::Park, d, m));
        host += mc.weight_bytes;
        return true;
    }
    p.steps.push_back(make_step(StepKind::Unload, d, m));
    return false;
}

// One device's jobs, in order, to steps: load on demand, unload after a model's last job, prefetch
// upcoming models while they fit beside the resident ones. When a model does not fit, models needed
// again later are evicted farthest-next-use first (Belady): parked in host memory when sleep mode
// and the host budget allow (woken later), else unloaded (loaded again later).
void emit_device(Plan& p, int32_t d, const std::vector<Job>& jobs, const Costs& c) {
    const double cap = c.devices[d].memory_bytes;
    const size_t J = jobs.size();
    const int64_t M = int64_t(c.models.size());
    std::vector<int64_t> next_use(J, int64_t(J)), seen(M, int64_t(J));
    for (size_t j = J; j-- > 0;) { next_use[j] = seen[jobs[j].model]; seen[jobs[j].model] = int64_t(j); }
    std::vector<int64_t> upcoming = seen;  // per model: index of its next job from the cursor on
    std::vector<int8_t> state(M, 0);      // 0 out, 1 resident, 2 parked
    double used = 0, host = 0;
    size_t next_load = 0;
    auto bring = [&](int32_t m) {  // load or wake into free memory; false if it does not fit
        if (state[m] == 1) return true;
        double sz = resident_bytes(c.models[m]);
        if (!fits(used + sz, cap)) return false;
        if (state[m] == 2) { p.steps.push_back(make_step(StepKind::Wake, d, m)); host -= c.models[m].weight_bytes; }
        else p.steps.push_back(make_step(StepKind::Load, d, m));
        state[m] = 1;
        used += sz;
        return true;
    };
    auto evict = [&](int32_t m, bool again) {
        state[m] = park_or_unload(p, d, m, again, c, host) ? 2 : 0;
        used -= resident_bytes(c.models[m]);
    };
    // Prefetch the following jobs' models into free memory only, in job order.
    auto prefetch = [&] { while (next_load < J && bring(jobs[next_load].model)) ++next_load; };
    for (size_t j = 0; j < J; ++j) {
        int32_t m = jobs[j].model;
        upcoming[m] = int64_t(j);
        if (state[m] != 1) {
            while (!bring(m)) {
                int32_t victim = -1;
                for (int32_t x = 0; x < M; ++x)
                    if (state[x] == 1 && x != m && (victim < 0 || upcoming[x] > upcoming[victim])) victim = x;
                if (victim < 0)
                    throw std::invalid_argument("model " + std::to_string(m) + " does not fit device " + std::to_string(d));
                evict(victim, upcoming[victim] < int64_t(J));
            }
        }
        next_load = std::max(next_load, j + 1);
        prefetch();
        emit_run(p, d, jobs[j]);
        upcoming[m] = next_use[j];
        if (next_use[j] == int64_t(J)) {
            evict(m, false);
            prefetch();
        }
    }
}

// Largest n in [0, hi] with f(n) true, f monotone decreasing in truth.
template <class F>
int64_t max_true(int64_t hi, F f) {
    int64_t lo = 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (f(mid)) lo = mid; else hi = mid - 1;
    }
    return lo;
}

struct Piece { int32_t model; int64_t begin, end; };

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

Plan emit_plan(const std::vector<std::vector<Job>>& jobs, const Costs& c) {
    Plan p;
    p.devices = int32_t(jobs.size());
    for (int32_t d = 0; d < p.devices; ++d) emit_device(p, d, jobs[d], c);
    return p;
}

// A floor under the simulated makespan of a device's jobs: its runs follow one another on its
// compute lane after the first model's load (and share one lane with every load without overlap).
double jobs_floor(const std::vector<std::vector<Job>>& jobs, const Costs& c) {
    double t = 0;
    for (size_t d = 0; d < jobs.size(); ++d) {
        if (jobs[d].empty()) continue;
        double x = c.models[jobs[d][0].model].load_s;
        if (!c.devices[d].overlap_load) {
            x = 0;
            std::vector<int32_t> seen;
            for (auto& j : jobs[d])
                if (std::find(seen.begin(), seen.end(), j.model) == seen.end()) { seen.push_back(j.model); x += c.models[j.model].load_s; }
        }
        for (auto& j : jobs[d]) x += run_seconds(c.models[j.model], j.role, j.n, 1, 0);
        t = std::max(t, x);
    }
    return t;
}

Plan plan_reference(const Workload& w, const Costs& c, double pause_s, bool pauses);

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
    if (D > 1) add(lpt_placement(order, ex, ag, work, c, true));
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
    auto best_jobs = assign(placements[winner.placement], winner.replicas, ex, ag, c);
    Plan best = emit_plan(best_jobs, c);
    // The winner with aggregations pulled forward to where their aggregator is resident.
    std::deque<std::vector<int64_t>> store;
    if (w.aggregator && early_aggregation(best_jobs, w, store)) {
        Plan p = emit_plan(best_jobs, c);
        double t = simulate(p, w, c).makespan;
        if (t < best_t) { best = std::move(p); best_t = t; }
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

}  // namespace

Plan make_plan(const Workload& w, const Costs& c, const PlanOptions& o) {
    check_inputs(w, c);
    SYMOE_CHECK(std::isfinite(o.pause_s) && o.pause_s >= 0, "pause_s must be finite and >= 0, got " + num(o.pause_s));
    switch (o.strategy) {
        case Strategy::Reference: return plan_reference(w, c, o.pause_s, true);
        case Strategy::Naive: return plan_naive(w, c);
        default: return plan_symoe(w, c, o);
    }
}

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
    auto work = [&](int64_t m, Role r, int64_t n) {  // n items' seconds of generation, without overhead and floor
        const ModelCost& mc = c.models[m];
        const Tokens& t = mc.tokens;
        double per = r == Role::Expert ? t.expert_prompt / mc.prefill_tps + t.expert_output / mc.decode_tps
                                       : t.aggregate_prompt / mc.prefill_tps + t.aggregate_output / mc.decode_tps;
        return double(n) * per;
    };
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
