"""The documentation stands alone and its pictures are current.

- every diagram in ``docs/diagrams/*.dot`` renders with Graphviz without a warning, and the PNG
  committed beside it is exactly what its source renders to;
- every picture a page embeds exists, and every ``*.dot`` is embedded somewhere;
- every relative link of every Markdown file points at a file inside the repository;
- no documentation or shipped file refers to a design document that users do not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import report
from tests.support import ROOT, UNIT

DIAGRAMS = sorted((ROOT / "docs" / "diagrams").glob("*.dot"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *patterns],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def dot() -> str:
    found = shutil.which("dot")
    assert found, "Graphviz is not installed (apt-get install graphviz)"
    return found


def test_there_are_diagrams() -> None:
    assert {p.stem for p in DIAGRAMS} >= {"architecture", "delivery"}


@pytest.mark.parametrize("source", DIAGRAMS, ids=lambda p: p.name)
def test_each_diagram_renders_to_its_committed_png(source: Path, tmp_path: Path) -> None:
    rendered = tmp_path / f"{source.stem}.png"
    result = subprocess.run(
        [dot(), "-Tpng", str(source), "-o", str(rendered)], capture_output=True, text=True,
        timeout=60 * UNIT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no Graphviz warning
    committed = source.with_suffix(".png")
    assert committed.exists(), f"render it: dot -Tpng {source.name} -o {committed.name}"
    version = subprocess.run([dot(), "-V"], capture_output=True, text=True, check=False).stderr
    assert committed.read_bytes() == rendered.read_bytes(), (
        f"{committed.name} is older than {source.name}: "
        f"cd docs/diagrams && dot -Tpng {source.name} -o {committed.name} ({version.strip()})"
    )


def markdown() -> list[Path]:
    return tracked("*.md")


def test_every_picture_exists_and_every_diagram_is_shown() -> None:
    shown: set[Path] = set()
    for page in markdown():
        for target in LINK.findall(page.read_text()):
            if target.endswith((".png", ".svg")):
                picture = (page.parent / target).resolve()
                assert picture.is_file(), (page.relative_to(ROOT), target)
                shown.add(picture)
    for source in DIAGRAMS:
        assert source.with_suffix(".png").resolve() in shown, f"{source.name} is shown nowhere"


def test_every_relative_link_stays_inside_the_repository() -> None:
    broken = []
    for page in markdown():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_nothing_refers_to_files_users_do_not_have() -> None:
    shipped = tracked(
        "*.md", "docs/**", "clients/js/**", "deploy/**", "alerts/**", "dashboards/**",
        "Containerfile", "pushsvc/client.py", "cli/**",
    )  # fmt: skip
    assert len(shipped) > 40
    offenders = []
    for path in shipped:
        if path.suffix == ".png":
            continue
        text = path.read_text(errors="replace")
        if re.search(r"DESIGN(\.md| §)|\.\./shared", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# -- the benchmark plot -------------------------------------------------------------------------


def written(value: float, unit: str) -> set[str]:
    """The ways docs/benchmarks.md may write ``value`` (thousands separators, a Unicode minus,
    milliseconds as seconds)."""
    size = abs(value)
    forms = {f"{size:,.0f}", f"{size:g}", f"{size:.1f}", f"{size:.2f}"}
    if unit == "ms":
        forms.add(f"{size / 1000:g} s")
    if value < 0:
        return {"\N{MINUS SIGN}" + form for form in forms}
    return forms


def test_every_plotted_figure_is_written_in_the_benchmarks_page() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    figures = report.load_figures()
    assert len(figures) >= 9
    missing = [
        (figure.name, value)
        for figure in figures
        for value in (*figure.runs, figure.limit, *figure.baselines.values())
        if not any(form in page for form in written(value, figure.unit))
    ]
    assert missing == []


def test_the_benchmark_plot_is_current_and_shown(tmp_path: Path) -> None:
    fresh = tmp_path / "targets.png"
    report.plot_targets(report.load_figures(), fresh)
    assert report.PLOT.is_file(), "python -m bench.report plot"
    assert report.PLOT.read_bytes() == fresh.read_bytes(), "python -m bench.report plot"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "](benchmarks/targets.png)" in page
