"""The documentation holds together: every file a document links exists, no project file cites a
document outside the repository, and README's Layout names exactly the library's modules."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "BENCHMARKS.md", *(p.relative_to(REPO).as_posix() for p in sorted(REPO.glob("docs/*.md"))),
        "custom_ops/README.md", "custom_ops/NOTES.md"]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".c", ".h", ".cc", ".cu", ".cuh", ".toml", ".txt", ".ld"}
# The working documents of the people who built the toolkit, which users do not have.
OUTSIDE = re.compile(r"\b(?:shared/|" + "ARCHITECTURES" + r"\.md|" + "DESIGN" + r"\.md|" + "STYLE" + r"\.md|"
                     + "MCU_EMULATION" + r"\.md)")


def project_files():
    """The project's own text files: tracked or new, never what git ignores (outputs, data, builds)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        path = REPO / name
        if not path.is_file() or path.is_symlink():
            continue
        if (path.suffix in TEXT_SUFFIXES or path.name == "Makefile") and path.stat().st_size < 1 << 20:
            yield path


@pytest.mark.parametrize("doc", DOCS)
def test_every_linked_file_exists(doc):
    text = (REPO / doc).read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in local if t and not (REPO / doc).parent.joinpath(t).exists()]
    assert not missing, f"{doc} links missing files: {missing}"


def test_no_file_cites_a_document_outside_the_repository():
    cited = [f"{path.relative_to(REPO)}:{number}" for path in project_files() if path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not cited, cited


def test_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    library = layout.split("weightsep/", 1)[1].split("\ndocs/", 1)[0]
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", library))
    modules = {p.name for p in (REPO / "weightsep").glob("*.py") if p.name != "__init__.py"}
    store = {p.name for p in (REPO / "weightsep" / "store").glob("*.py")}
    assert modules <= named, f"README's Layout lacks {sorted(modules - named)}"
    assert store - {"__init__.py"} <= named, f"README's Layout lacks store/{sorted(store - named)}"
    assert named <= modules | store, f"README's Layout names missing modules {sorted(named - modules - store)}"
    # the top-level entries: files and folders that exist (<task>/ stands for the ten task folders)
    entries = [line.split()[0] for line in layout.splitlines() if line[:1].strip()]
    assert "weightsep/" in entries and "docs/FORMAT.md" in entries
    assert [e for e in entries if "<" not in e and not (REPO / e).exists()] == []
