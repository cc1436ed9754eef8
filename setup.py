"""Build hook: the wheel carries the browser client, the dashboards and the alert rules.

Everything else is declared in pyproject.toml. The files are copied from where they are edited into
``pushsvc/_data/`` of the build tree only (never into the checkout), by the table in
``pushsvc/assets.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _sources() -> dict[str, tuple[str, tuple[str, ...]]]:
    spec = importlib.util.spec_from_file_location("_pushsvc_assets", HERE / "pushsvc" / "assets.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SOURCES)


class BuildWithAssets(build_py):
    """``build_py``, then the shipped files into ``pushsvc/_data/<kind>/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for kind, (folder, patterns) in _sources().items():
            root = HERE / folder
            target = Path(self.build_lib) / "pushsvc" / "_data" / kind
            files = {p for pattern in patterns for p in root.glob(pattern) if p.is_file()}
            if not files:
                raise SystemExit(f"nothing to package from {folder}/ ({', '.join(patterns)})")
            for path in sorted(files):
                dest = target / path.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildWithAssets})
