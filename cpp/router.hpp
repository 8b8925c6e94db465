// Routing: scoring + seeded sampling for every question, in parallel, then the rare filter.
#pragma once
#include <cstdint>
#include <vector>

#include "rare_filter.hpp"
#include "scoring.hpp"

namespace symoe {

// Bounds checked before anything is allocated: k per question, and the cells of each table route
// builds (questions x k experts, questions x models probabilities, models x keywords profiles).
constexpr int64_t kMaxK = int64_t(1) << 16;
constexpr int64_t kMaxCells = int64_t(1) << 32;

struct RouteOptions {
    ScoringOptions scoring;
    int64_t k = 3;                 // in [0, kMaxK]
    bool replace = true;
    double rare_threshold = 0.05;
    uint64_t seed = 0;
    uint64_t question_offset = 0;  // global index of the first question (batch splits)
    int threads = 0;               // >= 0; 0: all hardware threads
};

struct RouteResult {
    std::vector<int64_t> experts;        // N x k, model indices
    std::vector<double> probabilities;   // N x M when requested, else empty
    std::vector<double> gamma;           // M
    RareFilterResult filter;
};

// profiles: M x V row-major; questions in CSR form (indptr N+1, indices into [0, V)).
// Throws std::invalid_argument naming the problem for inconsistent input.
RouteResult route(const int64_t* profiles, int64_t M, int64_t V, const int64_t* indptr, int64_t N,
                  const int64_t* indices, int64_t nnz, const RouteOptions& opt, bool want_probabilities);

}  // namespace symoe
