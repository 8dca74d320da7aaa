"""Training throughput benchmarks: ``python -m dlcore bench`` and the files in ``bench/``.

``cases`` holds the model sizes and their targets, ``runner`` measures them on the
engines (and on PyTorch and JAX with ``peers``), ``report`` prints, saves and plots.
Nothing here is imported by ``import dlcore``.
"""
