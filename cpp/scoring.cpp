#include "scoring.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace symoe {

namespace {
inline int32_t positive_part(int32_t x) { return x & -int32_t(x > 0); }
inline double positive_part(double x) { return std::max(x, 0.0); }
}  // namespace

// Each model's competence base: its profile sum, shifted to >= 1 when any sum is negative.
static std::vector<double> competence_bases(const int64_t* profiles, int64_t M, int64_t V) {
    std::vector<int64_t> c(M, 0);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t v = 0; v < V; ++v) c[m] += profiles[m * V + v];
    int64_t lo = M ? *std::min_element(c.begin(), c.end()) : 0;
    std::vector<double> x(M);
    for (int64_t m = 0; m < M; ++m) x[m] = double(lo < 0 ? c[m] - lo + 1 : c[m]);
    return x;
}

std::vector<double> global_competence(const int64_t* profiles, int64_t M, int64_t V, double temperature) {
    std::vector<double> gamma = competence_bases(profiles, M, V);
    double inv_t = 1.0 / temperature;
    double total = 0.0;
    for (double& x : gamma) {
        // T = 0.5 (the reference) squares exactly; other T go through pow.
        x = inv_t == 2.0 ? x * x : std::pow(x, inv_t);
        total += x;
    }
    for (double& g : gamma) g = total > 0 ? g / total : 1.0 / double(M);
    return gamma;
}

double min_temperature(const int64_t* profiles, int64_t M, int64_t V) {
    double hi = 0, lo = INFINITY;  // largest base, smallest positive one
    for (double x : competence_bases(profiles, M, V))
        if (x > 0) hi = std::max(hi, x), lo = std::min(lo, x);
    if (hi <= 1) return 0.0;  // every base^(1/T) stays in [0, 1]
    // The M powers must sum below DBL_MAX, and the smallest normalised one stay above DBL_MIN
    // (else its weight is 0 and a question it alone suits falls back to uniform weights); one
    // factor e of margin for rounding in pow and the sum.
    double room = std::log(double(M)) + 1.0;
    return std::max(std::log(hi) / (std::log(DBL_MAX) - room), std::log(hi / lo) / (-std::log(DBL_MIN) - room));
}

template <class T>
std::vector<T> transpose_profiles(const int64_t* profiles, int64_t M, int64_t V) {
    std::vector<T> t(size_t(M * V));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t v = 0; v < V; ++v) t[v * M + m] = T(profiles[m * V + v]);
    return t;
}

template <class T>
double question_weights(const T* __restrict pt, int64_t M, const int64_t* kw, int64_t nkw,
                        const double* __restrict gamma, const ScoringOptions& opt, T* __restrict s,
                        double* __restrict w, double* __restrict cum) {
    if (nkw == 0) {
        for (int64_t m = 0; m < M; ++m) { w[m] = 1.0; cum[m] = double(m + 1); }
        return double(M);
    }
    const T* row = pt + kw[0] * M;
    for (int64_t m = 0; m < M; ++m) s[m] = row[m];
    for (int64_t j = 1; j < nkw; ++j) {
        row = pt + kw[j] * M;
        for (int64_t m = 0; m < M; ++m) s[m] += row[m];
    }
    T lo = s[0], hi = s[0];
    for (int64_t m = 1; m < M; ++m) { lo = s[m] < lo ? s[m] : lo; hi = s[m] > hi ? s[m] : hi; }
    bool any_pos = hi > 0;
    if (any_pos)  // max(s, 0) * gamma is s * gamma or exactly 0; branch-free (signs are random)
        for (int64_t m = 0; m < M; ++m) w[m] = double(positive_part(s[m])) * gamma[m];
    else
        for (int64_t m = 0; m < M; ++m) w[m] = double(s[m] - lo + 1) * gamma[m];
    if (opt.weighting == Weighting::Softmax) {
        // Paper's text: softmax with temperature over the candidates' weights.
        double hi = -INFINITY;
        for (int64_t m = 0; m < M; ++m)
            if (!any_pos || s[m] > 0) hi = std::max(hi, w[m]);
        for (int64_t m = 0; m < M; ++m)
            w[m] = (!any_pos || s[m] > 0) ? std::exp((w[m] - hi) / opt.softmax_temperature) : 0.0;
    }
    // One sequential cumsum: its last entry is the total, in the order every draw assumes.
    double total = 0.0;
    for (int64_t m = 0; m < M; ++m) cum[m] = total += w[m];
    if (total > 0) return total;
    total = 0.0;
    for (int64_t m = 0; m < M; ++m) {
        w[m] = (!any_pos || s[m] > 0) ? 1.0 : 0.0;
        cum[m] = total += w[m];
    }
    return total;
}

template std::vector<int32_t> transpose_profiles<int32_t>(const int64_t*, int64_t, int64_t);
template std::vector<double> transpose_profiles<double>(const int64_t*, int64_t, int64_t);
template double question_weights<int32_t>(const int32_t*, int64_t, const int64_t*, int64_t, const double*,
                                          const ScoringOptions&, int32_t*, double*, double*);
template double question_weights<double>(const double*, int64_t, const int64_t*, int64_t, const double*,
                                         const ScoringOptions&, double*, double*, double*);

}  // namespace symoe
