// Static chunking over [0, n): each index is processed by exactly one thread and results never
// depend on the split, because every per-index computation is independent.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace symoe {

inline int resolve_threads(int threads) {
    if (threads > 0) return threads;
    unsigned hw = std::thread::hardware_concurrency();
    return hw ? int(hw) : 1;
}

// Chunks parallel_chunks uses: at most one per 4096 indices, so per-chunk scratch stays small
// whatever thread count is asked for.
inline int chunk_count(int64_t n, int threads) {
    return int(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(threads), (n + 4095) / 4096)));
}

// fn(begin, end, chunk_index); the first exception thrown by any chunk is rethrown here.
template <class F>
void parallel_chunks(int64_t n, int threads, F&& fn) {
    int t = chunk_count(n, threads);
    if (t <= 1) { fn(int64_t(0), n, 0); return; }
    std::vector<std::thread> pool;
    std::exception_ptr err;
    std::mutex mu;
    int64_t step = (n + t - 1) / t;
    for (int c = 0; c < t; ++c) {
        int64_t b = c * step, e = std::min(n, b + step);
        if (b >= e) break;
        pool.emplace_back([&, b, e, c] {
            try { fn(b, e, c); } catch (...) {
                std::lock_guard<std::mutex> g(mu);
                if (!err) err = std::current_exception();
            }
        });
    }
    for (auto& th : pool) th.join();
    if (err) std::rethrow_exception(err);
}

}  // namespace symoe
