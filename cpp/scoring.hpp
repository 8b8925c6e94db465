// Skill-profile scoring (SYMBOLIC_MOE.md section 4, steps 1-3): global competence gamma,
// local suitability S(m, q), and the per-question candidate weights.
#pragma once
#include <cstdint>
#include <vector>

namespace symoe {

enum class Weighting { Reference, Softmax };

struct ScoringOptions {
    double temperature = 0.5;          // gamma = shifted_competence^(1/T), normalised
    Weighting weighting = Weighting::Reference;
    double softmax_temperature = 0.5;  // only for Weighting::Softmax
};

// profiles: row-major M x V. Returns gamma (length M), summing to 1.
// All-zero competence (nothing to prefer) gives a uniform gamma instead of 0/0.
std::vector<double> global_competence(const int64_t* profiles, int64_t M, int64_t V, double temperature);

// The smallest temperature whose gamma neither overflows (NaN after normalising) nor underflows
// to 0 for a model of positive competence; 0 when every T > 0 works.
double min_temperature(const int64_t* profiles, int64_t M, int64_t V);

// Keyword-major copy (V x M) so one question's scores read contiguous rows. T = int32_t when
// sums fit (a 16-model row is one cache line), else double (exact below 2^53; caller checks).
template <class T>
std::vector<T> transpose_profiles(const int64_t* profiles, int64_t M, int64_t V);

// Unnormalised weights w (length M) for one question from its keyword ids, per the reference:
// candidates are models with S > 0 weighted S * gamma; if none, all models weighted
// (S - min S + 1) * gamma. No keywords: uniform. If every candidate weight is zero (gamma is zero
// where S is positive), candidates are weighted uniformly so the draw stays defined.
// s_buf is caller scratch of length M; cum receives the sequential cumsum of w. Returns the
// total weight (cum[M-1]).
template <class T>
double question_weights(const T* profiles_t, int64_t M, const int64_t* kw, int64_t nkw,
                        const double* gamma, const ScoringOptions& opt, T* s_buf, double* w, double* cum);

}  // namespace symoe
