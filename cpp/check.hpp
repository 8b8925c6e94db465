// Input checks that build their message only on failure (they sit inside hot loops).
#pragma once
#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>

#define SYMOE_CHECK(cond, msg)                                       \
    do {                                                             \
        if (!(cond)) throw std::invalid_argument(std::string(msg)); \
    } while (0)

namespace symoe {

// Shortest round-trip text of a value, so messages quote what was passed (1e+30, nan, inf).
template <class T>
inline std::string num(T x) {
    char buf[32];
    return std::string(buf, std::to_chars(buf, buf + sizeof buf, x).ptr);
}

// a * b <= limit for non-negative a, b, without computing the (possibly overflowing) product.
inline bool product_within(int64_t a, int64_t b, int64_t limit) { return a == 0 || b <= limit / a; }

}  // namespace symoe
