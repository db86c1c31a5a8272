"""README's Faithfulness table: every mode of the command line has a row, every row one of the
four statuses, and every flag of the original a row that names it."""

import re

import WeightSeparation
from conftest import REPO

STATUSES = {"same", "fixed bug", "option", "differs"}
# The original WeightSeparation.py's command-line flags (its argparse definitions).
ORIGINAL_FLAGS = ("-mode", "-network_path", "-vnn_name", "-iter", "-transpose", "-target_accuracy", "-alpha",
                  "-margin", "-use_exclusive_page", "-Q")


def table_rows():
    """The rows of the table under '## Faithfulness': lists of cells (backslash-escaped pipes kept)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Faithfulness\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header, rule, *rows = lines
    assert re.fullmatch(r"\|(---\|)+", rule)
    width = header.count("|") - 1
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert all(len(row) == width for row in cells), [row for row in cells if len(row) != width]
    return cells


def test_every_row_has_one_of_the_four_statuses():
    rows = table_rows()
    assert len(rows) > 40
    bad = [(row[0], row[3]) for row in rows if row[3] not in STATUSES]
    assert not bad


def test_every_mode_of_the_command_line_has_a_row():
    first_cells = [row[0] for row in table_rows()]
    missing = [mode for mode in WeightSeparation.MODES
               if not any(f"`-mode={mode}`" in cell for cell in first_cells)]
    assert not missing, f"modes without a row in README's Faithfulness table: {missing}"


def test_every_flag_of_the_original_is_named_in_a_row():
    first_cells = " ".join(row[0] for row in table_rows())
    missing = [flag for flag in ORIGINAL_FLAGS if not re.search(rf"`{flag}(=[^`]*)?`", first_cells)]
    assert not missing
