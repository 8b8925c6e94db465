#include "scoring.hpp"

#include <algorithm>
#include <cmath>

namespace symoe {

std::vector<double> global_competence(const int64_t* profiles, int64_t M, int64_t V, double temperature) {
    std::vector<double> gamma(M, 0.0);
    if (M == 0) return gamma;
    std::vector<int64_t> c(M, 0);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t v = 0; v < V; ++v) c[m] += profiles[m * V + v];
    int64_t lo = *std::min_element(c.begin(), c.end());
    double inv_t = 1.0 / temperature;
    double total = 0.0;
    for (int64_t m = 0; m < M; ++m) {
        double x = double(lo < 0 ? c[m] - lo + 1 : c[m]);
        // T = 0.5 (the reference) squares exactly; other T go through pow.
        gamma[m] = inv_t == 2.0 ? x * x : std::pow(x, inv_t);
        total += gamma[m];
    }
    for (int64_t m = 0; m < M; ++m) gamma[m] = total > 0 ? gamma[m] / total : 1.0 / double(M);
    return gamma;
}

std::vector<int64_t> transpose_profiles(const int64_t* profiles, int64_t M, int64_t V) {
    std::vector<int64_t> t(size_t(M * V));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t v = 0; v < V; ++v) t[v * M + m] = profiles[m * V + v];
    return t;
}

double question_weights(const int64_t* pt, int64_t M, const int64_t* kw, int64_t nkw,
                        const double* gamma, const ScoringOptions& opt, int64_t* s, double* w) {
    if (nkw == 0) {
        for (int64_t m = 0; m < M; ++m) w[m] = 1.0;
        return double(M);
    }
    std::fill(s, s + M, int64_t(0));
    for (int64_t j = 0; j < nkw; ++j) {
        const int64_t* row = pt + kw[j] * M;
        for (int64_t m = 0; m < M; ++m) s[m] += row[m];
    }
    bool any_pos = false;
    int64_t lo = s[0];
    for (int64_t m = 0; m < M; ++m) { any_pos |= s[m] > 0; lo = std::min(lo, s[m]); }
    for (int64_t m = 0; m < M; ++m) {
        if (any_pos) w[m] = s[m] > 0 ? double(s[m]) * gamma[m] : 0.0;
        else w[m] = double(s[m] - lo + 1) * gamma[m];
    }
    if (opt.weighting == Weighting::Softmax) {
        // Paper's text: softmax with temperature over the candidates' weights.
        double hi = -INFINITY;
        for (int64_t m = 0; m < M; ++m)
            if (!any_pos || s[m] > 0) hi = std::max(hi, w[m]);
        for (int64_t m = 0; m < M; ++m)
            w[m] = (!any_pos || s[m] > 0) ? std::exp((w[m] - hi) / opt.softmax_temperature) : 0.0;
    }
    double total = 0.0;
    for (int64_t m = 0; m < M; ++m) total += w[m];
    if (total > 0) return total;
    total = 0.0;
    for (int64_t m = 0; m < M; ++m) {
        w[m] = (!any_pos || s[m] > 0) ? 1.0 : 0.0;
        total += w[m];
    }
    return total;
}

}  // namespace symoe
