// The _core module: only calls one register function per concept (each in its register_*.cpp, as
// in boost-histogram). Those files are the only ones that know Python: they convert every argument
// to its exact C++ type through convert.hpp (a ValueError naming the argument and value when it
// cannot be), keep each converted array alive for the whole call, release the GIL, and map
// std::invalid_argument to ValueError (pybind11's default translation).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_routing(py::module_& m);
void register_planning(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "symoe C++ core: routing, planning and simulation";
    register_routing(m);
    register_planning(m);
}
