#include "router.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "parallel.hpp"
#include "sampling.hpp"

namespace symoe {

static void check(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
}

RouteResult route(const int64_t* profiles, int64_t M, int64_t V, const int64_t* indptr, int64_t N,
                  const int64_t* indices, int64_t nnz, const RouteOptions& opt, bool want_p) {
    check(M >= 1, "pool is empty: profiles need at least one model row");
    check(opt.k >= 0, "k must be >= 0, got " + std::to_string(opt.k));
    check(opt.replace || opt.k <= M, "k=" + std::to_string(opt.k) + " exceeds the pool size M=" +
                                         std::to_string(M) + " when sampling without replacement");
    check(std::isfinite(opt.scoring.temperature) && opt.scoring.temperature > 0,
          "temperature must be a positive finite number");
    check(std::isfinite(opt.scoring.softmax_temperature) && opt.scoring.softmax_temperature > 0,
          "softmax_temperature must be a positive finite number");
    check(std::isfinite(opt.rare_threshold) && opt.rare_threshold <= 1,
          "rare_threshold must be finite and at most 1");
    check(indptr[0] == 0, "indptr[0] must be 0");
    check(indptr[N] == nnz, "indptr[-1] must equal len(indices)");
    for (int64_t i = 0; i < N; ++i)
        check(indptr[i] <= indptr[i + 1], "indptr must be non-decreasing (question " + std::to_string(i) + ")");
    for (int64_t j = 0; j < nnz; ++j)
        check(indices[j] >= 0 && indices[j] < V, "keyword id " + std::to_string(indices[j]) +
                                                     " out of range [0, " + std::to_string(V) + ")");

    RouteResult r;
    r.gamma = global_competence(profiles, M, V, opt.scoring.temperature);
    std::vector<int64_t> pt = transpose_profiles(profiles, M, V);
    r.experts.assign(size_t(N * opt.k), 0);
    if (want_p) r.probabilities.assign(size_t(N * M), 0.0);
    parallel_chunks(N, opt.threads, [&](int64_t b, int64_t e, int) {
        std::vector<int64_t> s(M);
        std::vector<double> w(M);
        for (int64_t i = b; i < e; ++i) {
            double total = question_weights(pt.data(), M, indices + indptr[i], indptr[i + 1] - indptr[i],
                                            r.gamma.data(), opt.scoring, s.data(), w.data());
            if (want_p)
                for (int64_t m = 0; m < M; ++m) r.probabilities[i * M + m] = w[m] / total;
            draw_k(w.data(), M, total, opt.k, opt.replace, opt.seed, opt.question_offset + uint64_t(i),
                   r.experts.data() + i * opt.k);
        }
    });
    r.filter = rare_filter(r.experts.data(), N, opt.k, M, opt.rare_threshold, opt.replace, opt.seed,
                           opt.question_offset, opt.threads);
    return r;
}

}  // namespace symoe
