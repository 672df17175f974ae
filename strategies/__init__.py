"""Strategies: one module each, registered with ``@register_strategy``.

Modules here are imported by :func:`cl.strategy.load_builtin_strategies`, so adding a strategy
means adding a file (plus its ``conf/strategy/<name>.yaml`` and tests).
"""
