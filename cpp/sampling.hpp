// Seeded sampling of k experts for one question (section 4, steps 4-5) by inverse CDF over
// unnormalised weights, with a counter-based uniform per (question, slot).
#pragma once
#include <cstdint>

namespace symoe {

// Index of the first m with u * total < cumsum(w)[m]; weights of zero are never chosen.
// total must equal the sequential sum of w (cumsum's last entry).
int64_t draw_one(const double* w, int64_t M, double total, double u);

// The same draw from the sequential cumsum, branch-free (the hot path): adding a zero weight
// leaves the running sum unchanged, so the first cum[m] above x is a positive-weight model.
inline int64_t draw_cum(const double* cum, const double* w, int64_t M, double u) {
    double x = u * cum[M - 1];
    int64_t idx = 0;
    for (int64_t m = 0; m < M; ++m) idx += cum[m] <= x;  // first m with x < cum[m]
    if (idx < M) return idx;
    while (idx > 0 && w[idx - 1] <= 0) --idx;  // rounding at the very top of the range
    return idx - 1;
}

// Fills out[0..k). With replacement: k independent draws. Without: each draw removes the model
// (w is modified); once no weight is left, remaining slots go uniformly to unchosen models.
// Caller guarantees k <= M when !replace.
// cum is the sequential cumsum of w (used for draws with replacement).
void draw_k(double* w, const double* cum, int64_t M, double total, int64_t k, bool replace, uint64_t seed,
            uint64_t question, int64_t* out);

}  // namespace symoe
