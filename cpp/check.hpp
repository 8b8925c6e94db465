// Input checks that build their message only on failure (they sit inside hot loops).
#pragma once
#include <stdexcept>
#include <string>

#define SYMOE_CHECK(cond, msg)                                       \
    do {                                                             \
        if (!(cond)) throw std::invalid_argument(std::string(msg)); \
    } while (0)
