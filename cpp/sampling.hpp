// Seeded sampling of k experts for one question (section 4, steps 4-5) by inverse CDF over
// unnormalised weights, with a counter-based uniform per (question, slot).
#pragma once
#include <cstdint>

namespace symoe {

// Index of the first m with u * total < cumsum(w)[m]; weights of zero are never chosen.
int64_t draw_one(const double* w, int64_t M, double total, double u);

// Fills out[0..k). With replacement: k independent draws. Without: each draw removes the model
// (w is modified); once no weight is left, remaining slots go uniformly to unchosen models.
// Caller guarantees k <= M when !replace.
void draw_k(double* w, int64_t M, double total, int64_t k, bool replace, uint64_t seed,
            uint64_t question, int64_t* out);

}  // namespace symoe
