// The planner: turns an assignment into a load-once execution plan under device-memory limits.
#pragma once
#include <string>

#include "plan.hpp"

namespace symoe {

enum class Strategy { Symoe, Reference, Naive };

struct PlanOptions {
    Strategy strategy = Strategy::Symoe;
    double pause_s = 10.0;   // the reference's fixed sleep after each expert
    bool replicate = true;   // symoe: split a model's work over several devices when it pays
};

// symoe: work per model is placed on devices by a wrap-around fill (McNaughton's rule with a
// load cost per piece) at the smallest feasible makespan found by bisection, so a heavy expert is
// replicated exactly where the imbalance it removes outweighs its extra load; or each model whole
// on the least-loaded device (LPT), also in a memory-aware form (models that fit few devices
// first, devices pre-loaded with the aggregation only they can hold). Aggregation follows the
// experts, split evenly over 1..D devices or water-filled over devices by their work so far and
// the aggregator's load where it is not resident; every candidate is simulated and the best kept.
// On each device the jobs follow Johnson's rule for the
// two-stage load -> generate flow, with any model that aggregates there last so it is loaded once;
// the next model is loaded while the current one generates whenever both fit in memory.
// With several devices the reference's tensor-parallel schedule without pauses is a candidate too
// (fastest for a handful of questions).
// reference: the authors' schedule (one model at a time in order of first appearance, cold load,
// pause after each expert, all devices as one tensor-parallel group; with unequal devices each
// model on the widest run of consecutive devices that holds its shards).
// naive: every question loads each of its experts and its aggregator on device q mod D, or the
// next device a model fits (with sleep mode and host memory: parks each model after use and
// wakes it when used again).
Plan make_plan(const Workload& w, const Costs& c, const PlanOptions& o);

// A lower bound on the makespan of every plan validate() accepts, tensor-parallel steps
// included (the terms and why each holds are in planner_bound.cpp).
double lower_bound(const Workload& w, const Costs& c);

}  // namespace symoe
