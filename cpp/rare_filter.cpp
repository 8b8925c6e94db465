#include "rare_filter.hpp"

#include "parallel.hpp"
#include "rng.hpp"
#include "sampling.hpp"

namespace symoe {

RareFilterResult rare_filter(int64_t* ex, int64_t N, int64_t k, int64_t M, double threshold,
                             bool replace, uint64_t seed, uint64_t offset, int threads) {
    RareFilterResult r;
    r.counts_before.assign(M, 0);
    r.kept.assign(M, 1);
    int nt = chunk_count(N, threads);  // chunk indices stay below this
    std::vector<std::vector<int64_t>> partial(nt, std::vector<int64_t>(M, 0));
    parallel_chunks(N, nt, [&](int64_t b, int64_t e, int c) {
        auto& cnt = partial[c];
        for (int64_t i = b * k; i < e * k; ++i) cnt[ex[i]]++;
    });
    for (auto& p : partial)
        for (int64_t m = 0; m < M; ++m) r.counts_before[m] += p[m];
    if (threshold <= 0 || N == 0 || k == 0) return r;
    double slots = double(N) * double(k);
    bool any_kept = false, any_dropped = false;
    for (int64_t m = 0; m < M; ++m) {
        r.kept[m] = double(r.counts_before[m]) / slots >= threshold;
        any_kept |= r.kept[m] != 0;
        any_dropped |= r.counts_before[m] > 0 && !r.kept[m];
    }
    if (!any_kept) { r.kept.assign(M, 1); return r; }
    if (!any_dropped) return r;
    std::vector<double> base(M, 0.0);
    for (int64_t m = 0; m < M; ++m) base[m] = r.kept[m] ? double(r.counts_before[m]) : 0.0;
    std::vector<int64_t> replaced(nt, 0);
    parallel_chunks(N, nt, [&](int64_t b, int64_t e, int c) {
        std::vector<double> w(M);
        for (int64_t i = b; i < e; ++i) {
            int64_t* row = ex + i * k;
            for (int64_t j = 0; j < k; ++j) {
                if (r.kept[row[j]]) continue;
                double u = uniform(seed, offset + uint64_t(i), kRareReplace, uint32_t(j));
                double total = 0.0;
                for (int64_t m = 0; m < M; ++m) {
                    w[m] = base[m];
                    if (!replace)
                        for (int64_t t = 0; t < k; ++t) if (row[t] == m) w[m] = 0.0;
                    total += w[m];
                }
                if (total <= 0) continue;
                row[j] = draw_one(w.data(), M, total, u);
                replaced[c]++;
            }
        }
    });
    for (auto x : replaced) r.replaced += x;
    return r;
}

}  // namespace symoe
