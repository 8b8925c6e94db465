#include "simulator.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace symoe {

Timeline simulate(const Plan& p, const Workload& w, const Costs& c) {
    const int32_t D = p.devices;
    const int64_t M = int64_t(c.models.size()), S = int64_t(p.steps.size());
    Timeline t;
    t.start.assign(S, 0.0);
    t.end.assign(S, 0.0);
    t.busy.assign(D, 0.0);
    // Each device's steps in list order; a tensor-parallel step is in the order of every device it
    // spans and runs when it heads all of them (so each device sees its steps in the order
    // validate() checked them, whatever other devices' steps hold it up).
    std::vector<std::vector<int64_t>> order(D);
    for (int64_t s = 0; s < S; ++s)
        for (int32_t e = p.steps[s].device; e < p.steps[s].device + std::max(1, p.steps[s].tp); ++e) order[e].push_back(s);
    std::vector<double> io(D, 0.0), comp(D, 0.0), released(D, 0.0);
    std::vector<std::vector<double>> ready(D, std::vector<double>(M, 0.0)), last_run(D, std::vector<double>(M, 0.0));
    // Expert completion per question, known once all its slots have been simulated.
    std::vector<int64_t> pending(size_t(w.N), w.k);
    std::vector<double> q_done(size_t(w.N), 0.0);
    std::vector<size_t> pos(D, 0);
    std::vector<int64_t> scan(S, -1);  // aggregation steps: items already found ready
    std::vector<double> dep(S, 0.0);
    int64_t done = 0;
    while (done < S) {
        bool progress = false;
        for (int32_t d = 0; d < D; ++d) {
            while (pos[d] < order[d].size()) {
                int64_t s = order[d][pos[d]];
                const Step& st = p.steps[s];
                int32_t d1 = st.device + std::max(1, st.tp);
                bool heads_all = true;
                for (int32_t e = st.device; e < d1 && heads_all; ++e) heads_all = order[e][pos[e]] == s;
                if (!heads_all) break;  // a spanned device has earlier steps of its own to run first
                auto lane_max = [&](const std::vector<double>& v) {
                    double x = 0;
                    for (int32_t e = st.device; e < d1; ++e) x = std::max(x, v[e]);
                    return x;
                };
                auto set_lane = [&](std::vector<double>& v, double x) {
                    for (int32_t e = st.device; e < d1; ++e) v[e] = x;
                };
                const int32_t o = st.device;  // the step's own device: its overlap and residency rule it
                const ModelCost* mc = st.model >= 0 ? &c.models[st.model] : nullptr;
                double b = 0, e = 0;
                if (st.kind == StepKind::Run && st.role == Role::Aggregate) {
                    if (scan[s] < 0) scan[s] = st.item_begin;
                    while (scan[s] < st.item_end && pending[p.items[scan[s]]] == 0) {
                        dep[s] = std::max(dep[s], q_done[p.items[scan[s]]]);
                        ++scan[s];
                    }
                    if (scan[s] < st.item_end) break;  // waits for experts elsewhere
                }
                switch (st.kind) {
                    case StepKind::Load:
                    case StepKind::Wake: {
                        b = std::max(lane_max(io), lane_max(released));
                        if (!c.devices[o].overlap_load) b = std::max(b, lane_max(comp));
                        e = b + (st.kind == StepKind::Load ? mc->load_s : mc->wake_s);
                        set_lane(io, e);
                        if (!c.devices[o].overlap_load) set_lane(comp, e);
                        for (int32_t x = st.device; x < d1; ++x) ready[x][st.model] = e;
                        if (st.kind == StepKind::Load) { t.loads++; t.bytes_loaded += mc->weight_bytes; }
                        break;
                    }
                    case StepKind::Unload:
                    case StepKind::Park: {
                        b = std::max(lane_max(io), last_run[o][st.model]);
                        b = std::max(b, ready[o][st.model]);
                        e = b + (st.kind == StepKind::Unload ? mc->unload_s : mc->park_s);
                        set_lane(io, e);
                        if (!c.devices[o].overlap_load) set_lane(comp, e);
                        set_lane(released, e);
                        break;
                    }
                    case StepKind::Run: {
                        b = std::max({lane_max(comp), ready[o][st.model], dep[s]});
                        if (!c.devices[o].overlap_load) b = std::max(b, lane_max(io));
                        int64_t n = st.item_end - st.item_begin;
                        e = b + run_seconds(*mc, st.role, n, std::max(1, st.tp), c.tp_efficiency);
                        set_lane(comp, e);
                        if (!c.devices[o].overlap_load) set_lane(io, e);
                        for (int32_t x = st.device; x < d1; ++x) { last_run[x][st.model] = e; t.busy[x] += e - b; }
                        if (st.role == Role::Expert)
                            for (int64_t i = st.item_begin; i < st.item_end; ++i) {
                                int64_t q = p.items[i] / w.k;
                                q_done[q] = std::max(q_done[q], e);
                                pending[q]--;
                            }
                        break;
                    }
                    case StepKind::Pause: {
                        b = std::max(lane_max(io), lane_max(comp));
                        e = b + st.seconds;
                        set_lane(io, e);
                        set_lane(comp, e);
                        break;
                    }
                }
                t.start[s] = b;
                t.end[s] = e;
                // Steps after a device's last run (unloads, parks, a pause) delay no result.
                if (st.kind == StepKind::Run) t.makespan = std::max(t.makespan, e);
                t.finish = std::max(t.finish, e);
                for (int32_t x = st.device; x < d1; ++x) ++pos[x];
                ++done;
                progress = true;
            }
        }
        if (!progress && done < S)
            throw std::invalid_argument("plan deadlocks: an aggregation step waits for expert slots that no "
                                        "device runs before it");
    }
    return t;
}

}  // namespace symoe
