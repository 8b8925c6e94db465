// The planner's parts, shared by its files (not part of the core's API): jobs and pieces of
// work, per-device step emission (planner_steps.cpp), placement of expert work on devices
// (planner_placement.cpp), aggregation assignment (planner_aggregation.cpp); the candidates and
// the reference and naive schedules are in planner.cpp, the lower bound in planner_bound.cpp.
#pragma once
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "plan.hpp"
#include "planner.hpp"

namespace symoe::detail {

// One run to emit: `n` items of a model in one role.
struct Job {
    int32_t model;
    Role role;
    const int64_t* items;  // into the grouped item lists
    int64_t n;
};

// A model's expert items [begin, end) (in its group) placed on a device.
struct Piece { int32_t model; int64_t begin, end; };

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

// ---- planner_steps.cpp: items grouped by model, and each device's jobs to steps -------------
std::vector<std::vector<int64_t>> group_experts(const Workload& w, int64_t M);
std::vector<std::vector<int64_t>> group_aggregation(const Workload& w, int64_t M);
Step make_step(StepKind k, int32_t d, int32_t m);
void emit_run(Plan& p, int32_t d, const Job& j, int32_t tp = 1);
bool park_or_unload(Plan& p, int32_t d, int32_t m, bool again, const Costs& c, double& host);
void emit_device(Plan& p, int32_t d, const std::vector<Job>& jobs, const Costs& c);
Plan emit_plan(const std::vector<std::vector<Job>>& jobs, const Costs& c);
double jobs_floor(const std::vector<std::vector<Job>>& jobs, const Costs& c);

// ---- planner_placement.cpp: expert work on devices ----------------------------------------
bool fill(const std::vector<int32_t>& order, const std::vector<std::vector<int64_t>>& groups, const Costs& c,
          double T, std::vector<std::vector<Piece>>* out);
bool balanced_placement(const std::vector<int32_t>& order, const std::vector<std::vector<int64_t>>& ex,
                        const std::vector<double>& work, const Costs& c, std::vector<std::vector<Piece>>& placed);
std::vector<std::vector<Piece>> lpt_placement(std::vector<int32_t> order, const std::vector<std::vector<int64_t>>& ex,
                                              const std::vector<std::vector<int64_t>>& ag, const std::vector<double>& work,
                                              const Costs& c, bool memory_aware);

// ---- planner_aggregation.cpp: jobs per device, aggregation included -------------------------
std::vector<std::vector<Job>> assign(const std::vector<std::vector<Piece>>& placed, int32_t replicas,
                                     const std::vector<std::vector<int64_t>>& ex,
                                     const std::vector<std::vector<int64_t>>& ag, const Costs& c);
bool early_aggregation(std::vector<std::vector<Job>>& jobs, const Workload& w, std::deque<std::vector<int64_t>>& store);

// ---- planner.cpp: the other schedules -----------------------------------------------------
Plan plan_reference(const Workload& w, const Costs& c, double pause_s, bool pauses);

}  // namespace symoe::detail
