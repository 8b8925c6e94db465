// The planner's per-device order: items grouped by model, and each device's jobs to steps.
#include "planner_detail.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace symoe::detail {

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

void emit_run(Plan& p, int32_t d, const Job& j, int32_t tp) {
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

}  // namespace symoe::detail
