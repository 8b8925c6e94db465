// Event-time execution of a plan against the cost model: predicted start/end of every step.
#pragma once
#include <vector>

#include "plan.hpp"

namespace symoe {

struct Timeline {
    std::vector<double> start, end;  // per step
    double makespan = 0;             // the last run's end: when the last result exists
    double finish = 0;               // the last step's end: trailing unloads, parks and pauses too
    std::vector<double> busy;        // per device: seconds spent generating
    int64_t loads = 0;               // Load steps (wakes not counted)
    double bytes_loaded = 0;
};

// Each device has an I/O lane (load, wake, unload, park) and a compute lane (runs); with
// overlap_load off they are one lane. Steps keep their list order within a lane; a tensor-parallel
// step (tp > 1) occupies the lanes of every device it spans, in each one's list order, and follows
// the overlap rule of its own (first) device. A load or wake
// waits for every earlier unload/park of its device (so memory never exceeds what validate()
// checked), a run waits for its model and, for aggregation, for every expert slot of its
// questions on any device. Throws std::invalid_argument if the plan deadlocks. The plan must be
// one make_plan() built or one validate() accepted: its fields index memory unchecked.
Timeline simulate(const Plan& p, const Workload& w, const Costs& c);

}  // namespace symoe
