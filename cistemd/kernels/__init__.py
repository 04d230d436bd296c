"""Pure numeric algorithms on numpy arrays.

Kernels import numpy, scipy and numba only: no files, sockets, database or
logging configuration. Import the submodules directly
(``from cistemd.kernels import ctf``); this package imports nothing eagerly
so that a standalone program pays only for what it uses.
"""
