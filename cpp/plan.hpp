// The plan: per device, an ordered list of steps, plus the inputs it is judged against.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace symoe {

enum class StepKind : int8_t { Load = 0, Run = 1, Unload = 2, Park = 3, Wake = 4, Pause = 5 };
enum class Role : int8_t { Expert = 0, Aggregate = 1 };

struct Step {
    StepKind kind;
    int32_t device;
    int32_t model;        // -1 for Pause
    Role role;            // Run only
    int64_t item_begin;   // Run only: [begin, end) into Plan::items
    int64_t item_end;
    double seconds;       // Pause only
    int32_t tp;           // devices the step spans (tensor parallel); 1 normally
};

struct Plan {
    int32_t devices = 0;
    std::vector<Step> steps;     // each device's steps in order of appearance
    std::vector<int64_t> items;  // Expert runs: question * k + slot; Aggregate runs: question
};

// Expected tokens per request by role: the run-time model needs only these.
struct Tokens {
    double expert_prompt = 300, expert_output = 600;
    double aggregate_prompt = 2200, aggregate_output = 600;
};

constexpr int kCurvePoints = 8;  // decode rates at 1, 2, 4, ..., 128 sequences in flight
constexpr int kQuantiles = 16;   // output lengths per role, each an equal share of the requests

// Per model cost-model figures (seconds, bytes, tokens per second, tokens per request).
struct ModelCost {
    double weight_bytes = 0, extra_bytes = 0;  // resident size = weight + extra (KV, activations)
    double load_s = 0;    // cold start: read weights + engine init
    double unload_s = 0;
    double park_s = 0, wake_s = 0;  // sleep mode; negative park_s: not supported
    double overhead_s = 0;          // fixed cost per generate call
    double prefill_tps = 1, decode_tps = 1;  // aggregate throughput at saturation
    double stream_tps = 1;                   // one sequence alone: floor on a batch's time
    Tokens tokens;  // this model's own prompt and output lengths (reasoning models write far more)
    // The measured form (config/pool_file.py): with a curve, quantiles or max_seqs a run is timed by the drain.
    int curve_n = 0;                                // valid entries of curve (0: rate from stream/decode_tps)
    std::array<double, kCurvePoints> curve{};       // aggregate decode tokens/s at 2^i sequences in flight
    double max_seqs = 0;                            // sequences in flight at most (0: no limit)
    std::array<int, 2> q_n{};                       // valid quantiles by role (0: the mean output length)
    std::array<std::array<double, kQuantiles>, 2> quantiles{};  // by role: ascending output lengths
    bool drain() const { return curve_n > 0 || q_n[0] > 0 || q_n[1] > 0 || max_seqs > 0; }
};

struct Device {
    double memory_bytes = 0;
    bool overlap_load = true;  // a load may proceed while another resident model generates
    double host_bytes = 0;     // host memory for weights parked by sleep mode
};

struct Workload {
    int64_t N = 0, k = 0;
    const int64_t* experts = nullptr;     // N x k model ids
    const int64_t* aggregator = nullptr;  // N model ids, -1: no aggregation for that question
};

struct Costs {
    std::vector<ModelCost> models;
    std::vector<Device> devices;
    double tp_efficiency = 0.5;  // speed-up of a tp-way step = 1 + (tp - 1) * efficiency
};

double resident_bytes(const ModelCost& m);
// Memory comparisons tolerate rounding of sizes given in GB.
inline bool fits(double bytes, double capacity) { return bytes <= capacity * (1 + 1e-12); }
// Predicted seconds of one run of n requests of the model's role at tp-way tensor parallelism.
// Scalar form: overhead + max(n * (prompt / prefill + output / decode), output / stream) / speed.
// Drain form (drain()): overhead + (n * prompt / prefill + decode(n)) / speed, where the n requests
// start together and finish by length: decode(n) = sum_j (q_j - q_{j-1}) * step(n * (K - j) / K),
// step(b) = b / rate(b); above max_seqs = c requests queue, c stay in flight, and
// decode(n) = (n - c) * mean_length / rate(c) + decode(c).
// O(K) per call. With rate nondecreasing and rate(b) / b nonincreasing (check_model) run time is
// nondecreasing and subadditive in n, which the lower bound relies on.
double run_seconds(const ModelCost& m, Role role, int64_t n, int32_t tp, double tp_eff);
// The work of n requests however they are split into runs (no overhead, no one-sequence floor): a run
// of b <= n of them takes at least overhead + b / n * run_work(n) at tp 1 (the lower bound's share).
double run_work(const ModelCost& m, Role role, int64_t n);
// Aggregate decode tokens/s with b sequences in flight (interpolated linearly in b between 2^i points).
double decode_rate(const ModelCost& m, double b);

// Most devices x models pairs (the planner, validator and simulator keep tables of them).
constexpr int64_t kMaxDeviceModels = int64_t(1) << 24;

// Checks one model's figures (finite, sizes and times >= 0, throughputs > 0); messages start with `who`.
void check_model(const ModelCost& m, const std::string& who);

// Checks that the workload and costs are well formed (ids in range, sizes finite and >= 0, every
// used model fits some device). Throws std::invalid_argument naming the model and sizes.
void check_inputs(const Workload& w, const Costs& c);

// Checks every invariant of a plan: each (question, slot) run exactly once by its model, each
// aggregation exactly once by its aggregator, runs only of resident models, memory within each
// device at every point, every step's fields in range (checked before anything is indexed by
// them, so simulate() may then trust them). A model is resident on the group of devices
// [device, device + tp) that loaded it: its runs, parks, wakes and unload must name that same
// group (a model loaded on one device cannot run with tp = 2). Steps are checked in list order,
// the order in which every device, tensor-parallel steps included, executes them in simulate().
// Throws std::invalid_argument describing the first violation. Aggregation-after-experts is a
// timing property checked by the simulator.
void validate(const Plan& p, const Workload& w, const Costs& c);

}  // namespace symoe
