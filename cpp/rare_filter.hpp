// Rare-expert filter (section 4, step 6): models drawn less than `threshold` of all slots are
// replaced by models at or above it, drawn in proportion to their counts. It cuts the number of
// models that must be loaded at all.
#pragma once
#include <cstdint>
#include <vector>

namespace symoe {

struct RareFilterResult {
    std::vector<int64_t> counts_before;  // per model, over all N*k slots
    std::vector<uint8_t> kept;           // 1 where the model survives
    int64_t replaced = 0;                // slots rewritten
};

// experts: N x k row-major, rewritten in place. threshold <= 0 disables. If no model reaches the
// threshold the assignment is left unchanged (there is nothing to concentrate on).
// question_offset: global index of row 0, so the random streams match an unsplit run.
// Without replacement, a slot's substitute is drawn among kept models not already in its row;
// if every kept model is already there, the slot keeps its original model.
RareFilterResult rare_filter(int64_t* experts, int64_t N, int64_t k, int64_t M, double threshold,
                             bool replace, uint64_t seed, uint64_t question_offset, int threads);

}  // namespace symoe
