"""Every public name of the package says what it is for (a one-line docstring at least)."""

import importlib
import inspect
import pkgutil

import symoe

SCRIPTS = ("__main__", ".worker", "._core")  # run as programs or compiled: no Python API


def public_names():
    for info in pkgutil.walk_packages(symoe.__path__, "symoe."):
        if info.name.endswith(SCRIPTS):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(fn):
                        # getdoc: an override documented by the base class it implements counts
                        yield f"{mod.__name__}.{name}.{attr}", getattr(obj, attr) if not isinstance(member, property) else member


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in public_names() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)
