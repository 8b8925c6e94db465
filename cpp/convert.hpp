// Argument conversion for the bindings (the register_*.cpp files are its only users): every Python
// argument to its exact C++ type, or std::invalid_argument naming the argument and the value.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "check.hpp"

namespace symoe_py {

namespace py = pybind11;
using symoe::num;

template <class T>
using carray = py::array_t<T, py::array::c_style>;

// Hands a vector's buffer to NumPy without copying.
template <class T>
static py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>(shape, heap->data(), owner);
}

// ---- argument conversion: pybind11's own casters answer a float, an out-of-range integer or a
// wrong dtype with TypeError (or convert an array into a temporary), so every argument is taken
// as a Python object and converted here.

static std::string show(py::handle v) {  // bounded text for messages (a huge int's may fail)
    try {
        std::string s = PyNumber_Check(v.ptr()) ? std::string(py::str(v)) : std::string(py::repr(v));
        return s.size() > 80 ? s.substr(0, 77) + "..." : s;
    } catch (py::error_already_set&) {
        return std::string("a ") + Py_TYPE(v.ptr())->tp_name;
    }
}

// A Python integer, or anything with __index__ (NumPy integers); never a float.
template <class T>
static T to_int(py::handle v, const std::string& name) {
    if (PyObject* i = PyNumber_Index(v.ptr())) {
        py::object keep = py::reinterpret_steal<py::object>(i);
        if constexpr (std::is_signed_v<T>) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(i, &overflow);
            if (!overflow && x >= std::numeric_limits<T>::min() && x <= std::numeric_limits<T>::max()) return T(x);
        } else {
            unsigned long long x = PyLong_AsUnsignedLongLong(i);  // OverflowError when negative
            if (!PyErr_Occurred() && x <= std::numeric_limits<T>::max()) return T(x);
        }
    }
    PyErr_Clear();
    throw std::invalid_argument(name + " must be an integer in [" + num(std::numeric_limits<T>::min()) + ", " +
                                num(std::numeric_limits<T>::max()) + "], got " + show(v));
}

static double to_real(py::handle v, const std::string& name) {
    double x = PyFloat_AsDouble(v.ptr());
    if (x != -1.0 || !PyErr_Occurred()) return x;
    PyErr_Clear();
    throw std::invalid_argument(name + " must be a real number, got " + show(v));
}

static bool to_flag(py::handle v, const std::string& name) {
    const char* t = Py_TYPE(v.ptr())->tp_name;
    if (PyBool_Check(v.ptr()) || !std::strcmp(t, "numpy.bool") || !std::strcmp(t, "numpy.bool_"))
        return PyObject_IsTrue(v.ptr()) == 1;
    throw std::invalid_argument(name + " must be True or False, got " + show(v));
}

// Index of v among the options.
static int to_choice(py::handle v, const std::string& name, std::initializer_list<const char*> options) {
    std::string list;
    int i = 0;
    for (const char* o : options) {
        if (py::isinstance<py::str>(v) && v.equal(py::str(o))) return i;
        list += (i++ ? ", '" : "'") + std::string(o) + "'";
    }
    throw std::invalid_argument(name + " must be one of " + list + "; got " + show(v));
}

// Any array-like as a C-contiguous, aligned array of exactly T, owning its data (a copy when
// anything had to change): pointers into it stay valid while the returned object lives. Integer
// targets take integer or bool input whose values fit int64; real targets also take floats.
template <class T>
static carray<T> to_array(py::handle v, const std::string& name) {
    constexpr bool real = std::is_floating_point_v<T>, flag = std::is_same_v<T, bool>;
    py::module_ np = py::module_::import("numpy");
    py::object a;
    try {
        a = np.attr("asarray")(v);
    } catch (py::error_already_set& e) {  // ragged lists and the like
        if (!e.matches(PyExc_ValueError) && !e.matches(PyExc_TypeError) && !e.matches(PyExc_OverflowError)) throw;
        throw std::invalid_argument(name + " is not an array: " + e.what());
    }
    py::dtype dt = a.attr("dtype");
    char kind = dt.kind();
    if (!(kind == 'b' || kind == 'i' || kind == 'u' || (real && kind == 'f')))
        throw std::invalid_argument(name + " must be an array of " +
                                    (real ? "real numbers" : flag ? "booleans" : "integers") + ", got dtype " +
                                    std::string(py::str(dt)));
    if (!real && !flag && kind == 'u' && dt.itemsize() == 8 && a.attr("size").cast<py::ssize_t>() > 0) {
        py::object hi = a.attr("max")();  // would wrap when cast to int64
        if (to_int<uint64_t>(hi, name) > uint64_t(std::numeric_limits<int64_t>::max()))
            throw std::invalid_argument(name + " has value " + show(hi) + " beyond the int64 range");
    }
    if (flag && kind != 'b' && a.attr("size").cast<py::ssize_t>() > 0) {  // a cast would read 7 as true
        py::object bad = np.attr("flatnonzero")((a.attr("__ne__")(0)).attr("__and__")(a.attr("__ne__")(1)));
        if (py::len(bad) > 0)
            throw std::invalid_argument(name + " must hold booleans (or 0/1), got " +
                                        show(a.attr("ravel")()[bad[py::int_(0)]]) + " at flat index " + show(bad[py::int_(0)]));
    }
    return carray<T>::ensure(np.attr("require")(a, py::dtype::of<T>(), "CA"));
}

static std::string dims(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + num(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

}  // namespace symoe_py
