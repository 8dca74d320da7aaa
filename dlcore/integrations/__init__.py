"""Bridges between dlcore and other libraries, each in its own module and each importing
its library only when used: ``dlcore.integrations.optuna`` (hyperparameter search).

Importing ``dlcore`` does not import this package, and importing this package imports
none of the libraries it bridges to.
"""
