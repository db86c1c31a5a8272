"""The original's printouts, line for line: -mode=a prints the original's lines in its order
and wording before ours, and -mode=l its raw occupation table (weight_page_talbe) before ours.
Expected lines are built here from the original's print statements (documented in the test),
with values computed independently from the state and the data."""

import re

import numpy as np
import pytest

from conftest import TINY_OPTIONS, run_main
from weightsep import data as datasets
from weightsep.networks import load_network
from weightsep.store import Store, TaskRecord
from weightsep.tasks import TaskSpec, load_task

STATE_FLAGS = [f"-page_size={TINY_OPTIONS['page_size']}", f"-num_pages={TINY_OPTIONS['num_pages']}",
               f"-margin={TINY_OPTIONS['margin']}", "-data=synthetic"]
NUM_FIELDS = ("num_of_weight", "num_of_weight_page", "num_of_exclusive_weight", "num_of_exclusive_weight_page",
              "num_of_inexclusive_weight", "num_of_inexclusive_weight_page")


def fisher_lines(n_train):
    """do_compute_fisher's '%3d, data_idx: %5d' per sample: 50 draws from all training examples."""
    draws = np.random.default_rng(0).integers(0, n_train, size=50)
    return [f"{i:3d}, data_idx: {int(x):5d}" for i, x in enumerate(draws)]


def check_tail(lines, store, name, m, first):
    """From exclusive_weight_page_list to total_network_cost: returns (position after it, toal_cost)."""
    rec = store.task(name)
    at = next(i for i, line in enumerate(lines) if line.startswith("exclusive_weight_page_list "))
    assert lines[at] == f"exclusive_weight_page_list {rec.exclusive_pages}"
    assert [line.split()[0] for line in lines[at + 1:at + 7]] == list(NUM_FIELDS)
    assert lines[at + 2] == f"num_of_weight_page {rec.num_pages}"
    at += 7
    if not first:
        assert lines[at] == "[match_page_by_cost]"
        at = next(i for i in range(at, len(lines)) if lines[i].startswith("assign_page "))
    assert re.fullmatch(r"assign_page \d+\.\d{3} ms", lines[at]), lines[at]
    shared = [int(e) for e in rec.page_table if e < store.num_pages]  # the original's weight_page_list
    listed = str(np.array(shared, np.int32)).splitlines()
    assert lines[at + 1] == "inexclusive_weight_page_list"
    assert lines[at + 2:at + 2 + len(listed)] == listed
    at += 2 + len(listed)
    listed[0] = "vnn.weight_page_list " + listed[0]
    assert lines[at:at + len(listed)] == listed
    at += len(listed)
    assert lines[at] == "[calculate_cost]" and lines[at + 1].startswith("toal_cost: ")
    cost = float(lines[at + 1].split(": ")[1])
    assert lines[at + 2] == f"{m} pages allocated for {rec.num_weights - sum_exclusive(rec, store)} weights"
    assert lines[at + 3].startswith("total_network_cost: ")
    return at + 4, cost


def sum_exclusive(rec, store):
    S = store.page_size
    return sum(min(S, rec.num_weights - p * S) for p in rec.exclusive_pages)


def test_add_prints_the_original_lines_first(tiny_tasks, tmp_path):
    state = tmp_path / "st"
    first = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}", *STATE_FLAGS)
    store = Store(state).load()
    lines = first.stdout.splitlines()
    assert lines[:3] == ["init new weight pages", "no exclusive weight pages", "add_vnn"]
    assert lines[3] == str(store.vector_path("tiny_a", "network_weight"))
    assert lines[4:6] == ["compute_fisher", "do_compute_fisher"]
    assert lines[6:56] == fisher_lines(3000)
    assert lines[56] == str(store.vector_path("tiny_a", "network_fisher"))
    m_a = store.task("tiny_a").num_pages - len(store.task("tiny_a").exclusive_pages)
    end, cost = check_tail(lines, store, "tiny_a", m_a, first=True)
    assert cost == 0.0 and lines[end - 1] == "total_network_cost: 0.0"
    ours = lines[end:]
    assert ours[0].startswith(f"new state in {state}") and ours[1].startswith("add tiny_a: ")

    # The second task, with a target accuracy: the alpha-loss lines, then the level-by-level matching.
    second = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_b']}", f"-state_dir={state}",
                      "-target_accuracy=0.5", *STATE_FLAGS)
    store = Store(state).load()
    lines = second.stdout.splitlines()
    assert lines[0] == "add_vnn" and lines[4:54] == fisher_lines(3000)
    spec = load_task(tiny_tasks["tiny_b"])
    train = datasets.load_split(spec, "train", "synthetic", 0)
    probs = load_network(spec).predict(train.x).astype(np.float64)
    p_true = probs[np.arange(3000), train.y] / np.sqrt((probs ** 2).sum(axis=1))
    loss = np.where(p_true <= 0.5, -np.log(p_true), 0.0).mean()
    accuracy = np.mean(probs.argmax(axis=1) == train.y)
    assert lines[55:61] == ["compute_loss", "0 30000", "compute_target_loss",
                            f"tiny_b inference accuracy: {accuracy:f}", "compute_loss", "0 30000"]
    assert float(lines[61].split(": ")[1]) == pytest.approx(np.mean(p_true > 0.5), abs=1e-12)
    assert lines[61].startswith("alpha_accuracy: ")
    assert float(lines[62].split(": ")[1]) == pytest.approx(loss, rel=1e-5)
    assert lines[62].startswith("current_loss: ")
    rec_b = store.task("tiny_b")
    m_b = rec_b.num_pages - len(rec_b.exclusive_pages)
    end, cost = check_tail(lines, store, "tiny_b", m_b, first=False)
    # The matching's levels: occupation 0 (the pages tiny_a left free), then 1, until all are placed.
    start = lines.index("[match_page_by_cost]") + 1
    level_lines = lines[start:next(i for i in range(start, len(lines)) if lines[i].startswith("assign_page"))]
    P, left, level_costs = TINY_OPTIONS["num_pages"], m_b, []
    for level, chunk in enumerate(level_lines[i:i + 5] for i in range(0, len(level_lines), 5)):
        pages = P - m_a if level == 0 else m_a
        assert chunk[:3] == [f"occupation: {level}", f"len(page_list): {pages}", f"len(network_page_list): {left}"]
        assert chunk[4] == ""
        level_costs.append(float(chunk[3].split(": ")[1]))
        left -= min(left, pages)
    assert left == 0
    assert sum(level_costs) == pytest.approx(cost, rel=1e-12)
    assert f"matching cost: {cost}" in lines[end:]  # ours, after the original's lines


def hand_state(tmp_path):
    """P = 3 pages of 4. ta (id 0): 3 pages, page 0 exclusive, pages 1, 2 on shared 2, 0;
    tb (id 1): 3 pages on shared 1, 0, 2."""
    store = Store(tmp_path / "hand")
    spec = TaskSpec(name="x", input_shape=(1, 1, 1), num_classes=2, dense=(1,)).to_json()
    with store.writer():
        store.create(page_size=4, num_pages=3)
        for name, n, table, exclusive in (("ta", 12, [-1, 2, 0], [0]), ("tb", 12, [1, 0, 2], [])):
            store.add_task(TaskRecord(name=name, num_weights=n, page_table=table, exclusive_pages=exclusive,
                                      spec=dict(spec, name=name)), np.zeros((len(exclusive), 4), np.float32),
                           vectors={"network_weight": np.ones(n, np.float32), "network_fisher": np.ones(n, np.float32)})
    return store.dir


def test_list_prints_the_original_raw_table_first(tmp_path):
    """The original's weight_page_talbe holds [task id, rank among the task's sharable pages] per
    task page, appended as tasks were added; np.save made an object array of the ragged lists,
    which -mode=l printed.  ta's page 1 is its sharable page of rank 0."""
    state = hand_state(tmp_path)
    lines = run_main("-mode=l", f"-state_dir={state}").stdout.splitlines()
    assert lines[0] == "[VNN list]"
    assert lines[1].startswith("Name: ta, id: 0, path: ") and lines[1].endswith(
        "num_of_weight: 12 (8/4), num_of_page: 3 (2/1)")
    assert lines[2].endswith("num_of_weight: 12 (12/0), num_of_page: 3 (3/0)")
    assert lines[3:6] == ["", "[Weight page] total 3 weight pages",
                          "[list([[0, 1], [1, 1]]) list([[1, 0]]) list([[0, 0], [1, 2]])]"]
    assert lines[6] == "" and lines[7].startswith(f"state {state}: 2 tasks")


def test_list_of_an_empty_state_prints_the_empty_table(tmp_path):
    store = Store(tmp_path / "empty")
    with store.writer():
        store.create(page_size=4, num_pages=3)
    lines = run_main("-mode=l", f"-state_dir={store.dir}").stdout.splitlines()
    assert lines[:4] == ["[VNN list]", "", "[Weight page] total 3 weight pages", "[[], [], []]"]
