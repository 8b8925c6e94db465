"""The pool's configuration: the TOML pool file (every default), the resolved ``Config`` and its
specs, presets, device topology and the ``[cluster]`` table. Imports only errors/progress and the C++ core.
"""
