"""Numba CUDA kernels and their launchers, one module per job (``dlcore.kernels``).

The Numba engine (``dlcore.backends``) imports these modules when it is selected;
importing this package itself imports nothing, so ``import dlcore`` never pulls
in Numba.
"""
