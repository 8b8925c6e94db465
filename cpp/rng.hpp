// Counter-based random numbers: a draw is a pure function of (seed, question, stream, slot),
// so routing is bit-identical for any thread count, batch split or machine.
#pragma once
#include <cstdint>

namespace symoe {

// SplitMix64 finaliser: a bijective 64-bit mixer with full avalanche.
inline uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Key of one question's streams; computed once per question, then one mix per draw.
inline uint64_t question_key(uint64_t seed, uint64_t question) { return mix64(mix64(seed) ^ question); }

// Uniform double in [0, 1) with 53 random bits:
// mix64(mix64(mix64(seed) ^ question) ^ (stream << 32 | slot)) >> 11, scaled by 2^-53.
inline double uniform_at(uint64_t key, uint32_t stream, uint32_t slot) {
    return double(mix64(key ^ ((uint64_t(stream) << 32) | slot)) >> 11) * 0x1.0p-53;
}

inline double uniform(uint64_t seed, uint64_t question, uint32_t stream, uint32_t slot) {
    return uniform_at(question_key(seed, question), stream, slot);
}

// Streams keep independent uses of the same (seed, question) apart.
enum Stream : uint32_t { kExpertDraw = 0, kRareReplace = 1 };

}  // namespace symoe
