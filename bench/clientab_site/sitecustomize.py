"""Bench only: puts redis-py's pooled client under :class:`pushsvc.broker.redis.link.Link` in the
processes ``python -m bench.clientab`` starts (never shipped: this directory is put on
``PYTHONPATH`` by the bench alone).

With ``PUSHSVC_BENCH_REDIS_CLIENT=redis-py`` in the environment, the moment
``pushsvc.broker.redis.link`` is first imported its :class:`Link` is patched by
:func:`redispy_link.install`; any other value (or none) leaves the process untouched, so both arms
of the A/B start the same way. Processes that never import the link (load generators, clients)
pay one dictionary lookup.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

TARGET = "pushsvc.broker.redis.link"
ARM = os.environ.get("PUSHSVC_BENCH_REDIS_CLIENT", "mux")


class _Patch(importlib.abc.MetaPathFinder):
    """Finds :data:`TARGET` through the other finders and patches it once it has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            import redispy_link  # type: ignore[import-not-found]  # noqa: PLC0415 - lazily, beside us

            redispy_link.install(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if ARM == "redis-py":
    sys.meta_path.insert(0, _Patch())
