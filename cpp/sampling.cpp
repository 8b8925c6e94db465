#include "sampling.hpp"

#include "rng.hpp"

namespace symoe {

int64_t draw_one(const double* w, int64_t M, double total, double u) {
    double x = u * total, cum = 0.0;
    int64_t last = -1;
    for (int64_t m = 0; m < M; ++m) {
        if (w[m] <= 0) continue;
        cum += w[m];
        last = m;
        if (x < cum) return m;
    }
    return last;  // only when rounding puts x at the very top of the range
}

void draw_k(double* w, const double* cum, int64_t M, double total, int64_t k, bool replace, uint64_t seed,
            uint64_t question, int64_t* out) {
    if (replace) {
        uint64_t key = question_key(seed, question);
        for (int64_t j = 0; j < k; ++j) out[j] = draw_cum(cum, w, M, uniform_at(key, kExpertDraw, uint32_t(j)));
        return;
    }
    for (int64_t j = 0; j < k; ++j) {
        double u = uniform(seed, question, kExpertDraw, uint32_t(j));
        if (total <= 0) {
            // Positive-weight candidates exhausted: fill from the models not yet chosen.
            int64_t free_models = M - j, pick = int64_t(u * double(free_models)), seen = 0;
            for (int64_t m = 0; m < M; ++m) {
                bool used = false;
                for (int64_t i = 0; i < j; ++i) used |= out[i] == m;
                if (!used && seen++ == pick) { out[j] = m; break; }
            }
            continue;
        }
        int64_t m = draw_one(w, M, total, u);
        out[j] = m;
        w[m] = 0.0;
        total = 0.0;  // re-summed in model order so the result does not depend on draw history
        for (int64_t i = 0; i < M; ++i) total += w[i];
    }
}

}  // namespace symoe
