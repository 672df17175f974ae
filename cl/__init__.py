"""Continual-learning experiment platform: streams, strategies, metrics and sinks."""

import os as _os

__version__ = "0.1.0"

# The built-in strategies and the Hydra configs live in the repository's top-level
# ``strategies/`` and ``conf/`` folders; a wheel installs them as ``cl/strategies`` and
# ``cl/conf`` (pyproject ``package-dir``). A source checkout run without installing (or with
# PYTHONPATH pointing at it) finds ``cl.strategies`` through the repository root.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "strategies")) and _os.path.isfile(
    _os.path.join(_root, "strategies", "__init__.py")
):
    __path__.append(_root)
