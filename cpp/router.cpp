#include "router.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "check.hpp"
#include "parallel.hpp"
#include "sampling.hpp"

namespace symoe {

template <class T>
static void sample_all(RouteResult& r, const int64_t* profiles, int64_t M, int64_t V, const int64_t* indptr,
                       int64_t N, const int64_t* indices, const RouteOptions& opt, bool want_p) {
    std::vector<T> pt = transpose_profiles<T>(profiles, M, V);
    parallel_chunks(N, opt.threads, [&](int64_t b, int64_t e, int) {
        std::vector<T> s(M);
        std::vector<double> w(M), cum(M);
        for (int64_t i = b; i < e; ++i) {
            double total = question_weights<T>(pt.data(), M, indices + indptr[i], indptr[i + 1] - indptr[i],
                                               r.gamma.data(), opt.scoring, s.data(), w.data(), cum.data());
            if (want_p)
                for (int64_t m = 0; m < M; ++m) r.probabilities[i * M + m] = w[m] / total;
            draw_k(w.data(), cum.data(), M, total, opt.k, opt.replace, opt.seed, opt.question_offset + uint64_t(i),
                   r.experts.data() + i * opt.k);
        }
    });
}

RouteResult route(const int64_t* profiles, int64_t M, int64_t V, const int64_t* indptr, int64_t N,
                  const int64_t* indices, int64_t nnz, const RouteOptions& opt, bool want_p) {
    SYMOE_CHECK(M >= 1, "pool is empty: profiles need at least one model row");
    SYMOE_CHECK(opt.k >= 0 && opt.k <= kMaxK, "k must be in [0, " + num(kMaxK) + "], got " + num(opt.k));
    SYMOE_CHECK(opt.replace || opt.k <= M, "k=" + num(opt.k) + " exceeds the pool size M=" + num(M) +
                                               " when sampling without replacement");
    SYMOE_CHECK(opt.threads >= 0, "threads must be >= 0 (0: all hardware threads), got " + num(opt.threads));
    // Table sizes are products of the inputs': bound them before they can overflow or be allocated.
    SYMOE_CHECK(product_within(N, opt.k, kMaxCells), num(N) + " questions x k=" + num(opt.k) +
                                                         " expert slots exceed the limit of 2^32");
    SYMOE_CHECK(product_within(M, std::max<int64_t>(V, 1), kMaxCells),
                "profiles of " + num(M) + " models x " + num(V) + " keywords exceed the limit of 2^32 cells");
    SYMOE_CHECK(!want_p || product_within(N, M, kMaxCells),
                "probabilities of " + num(N) + " questions x " + num(M) + " models exceed the limit of 2^32 cells");
    SYMOE_CHECK(std::isfinite(opt.scoring.temperature) && opt.scoring.temperature > 0,
                "temperature must be a positive finite number, got " + num(opt.scoring.temperature));
    SYMOE_CHECK(std::isfinite(opt.scoring.softmax_temperature) && opt.scoring.softmax_temperature > 0,
                "softmax_temperature must be a positive finite number, got " + num(opt.scoring.softmax_temperature));
    SYMOE_CHECK(std::isfinite(opt.rare_threshold) && opt.rare_threshold <= 1,
                "rare_threshold must be finite and at most 1, got " + num(opt.rare_threshold));
    SYMOE_CHECK(indptr[0] == 0, "indptr[0] must be 0, got " + num(indptr[0]));
    SYMOE_CHECK(indptr[N] == nnz, "indptr[-1] must equal len(indices) = " + num(nnz) + ", got " + num(indptr[N]));
    int64_t max_len = 0;
    for (int64_t i = 0; i < N; ++i) {
        SYMOE_CHECK(indptr[i] <= indptr[i + 1], "indptr must be non-decreasing (question " + num(i) + ": " +
                                                    num(indptr[i]) + " > " + num(indptr[i + 1]) + ")");
        max_len = std::max(max_len, indptr[i + 1] - indptr[i]);
    }
    for (int64_t j = 0; j < nnz; ++j)
        SYMOE_CHECK(indices[j] >= 0 && indices[j] < V,
                    "keyword id " + num(indices[j]) + " out of range [0, " + num(V) + ") in indices[" + num(j) + "]");

    // Sums of scores must stay exact (and competence sums must not overflow).
    const int64_t limit = int64_t(1) << 40;
    int64_t max_abs = 0;
    for (int64_t i = 0; i < M * V; ++i) {
        SYMOE_CHECK(profiles[i] > -limit && profiles[i] < limit,
                    "profile score " + num(profiles[i]) + " of model " + num(i / V) + ", keyword " + num(i % V) +
                        " out of range (|score| < 2^40)");
        max_abs = std::max(max_abs, profiles[i] < 0 ? -profiles[i] : profiles[i]);
    }
    SYMOE_CHECK(double(max_abs) * double(std::max<int64_t>(max_len, V)) < 0x1p52,
                "profile scores too large: |score| x keywords per question must stay below 2^52");
    // Below this, competence^(1/T) leaves the doubles and routing would silently turn uniform.
    if (double t_min = min_temperature(profiles, M, V); opt.scoring.temperature < t_min) {
        char lo[32];  // rounded up to 3 digits: the figure quoted works
        double p = std::pow(10.0, std::floor(std::log10(t_min)) - 2);
        std::snprintf(lo, sizeof lo, "%.3g", std::ceil(t_min / p) * p);
        SYMOE_CHECK(opt.scoring.temperature >= std::strtod(lo, nullptr),
                    "temperature " + num(opt.scoring.temperature) + " is too small for these profiles: competence^(1/"
                    "temperature) would overflow or underflow a double; use a temperature >= " + lo);
    }
    RouteResult r;
    r.experts.assign(size_t(N * opt.k), 0);
    if (want_p) r.probabilities.assign(size_t(N * M), 0.0);
    r.gamma = global_competence(profiles, M, V, opt.scoring.temperature);
    // int32 is exact when |score| x keywords per question stays below 2^30: then the shifted
    // score S - min S + 1 is below 2^31 too.
    bool narrow = double(max_abs) * double(std::max<int64_t>(max_len, 1)) < 0x1p30;
    if (narrow) sample_all<int32_t>(r, profiles, M, V, indptr, N, indices, opt, want_p);
    else sample_all<double>(r, profiles, M, V, indptr, N, indices, opt, want_p);
    r.filter = rare_filter(r.experts.data(), N, opt.k, M, opt.rare_threshold, opt.replace, opt.seed,
                           opt.question_offset, opt.threads);
    return r;
}

}  // namespace symoe
