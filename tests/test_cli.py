"""WeightSeparation.py in-process: every mode's printed lines (the original's where it had them)
checked against values computed here another way, and user errors as one line with a non-zero
exit status that change nothing.  (The scripts as subprocesses: tests/test_scripts.py.)"""

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import (REPO, TINY_OPTIONS, assert_one_line_error, copy_state, copy_task_folder, run_main, unprivileged,
                      write_task_folder)
from weightsep import data as datasets
from weightsep import separation
from weightsep.networks import Network, load_network
from weightsep.pipeline import total_network_cost
from weightsep.store import Store
from weightsep.tasks import load_task

STATE_FLAGS = [f"-page_size={TINY_OPTIONS['page_size']}", f"-num_pages={TINY_OPTIONS['num_pages']}",
               f"-margin={TINY_OPTIONS['margin']}", "-data=synthetic"]


def snapshot(folder):
    """Every file under folder (the lock file's content included) by relative path."""
    folder = Path(folder)
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_value(stdout, prefix):
    """The value after `prefix` on the one stdout line that starts with it."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, stdout)
    return lines[0][len(prefix):].strip()


def split_of(store, name, split):
    rec = store.task(name)
    return datasets.load_split(rec.task_spec(), split, data="synthetic", seed=rec.settings["data_seed"])


def accuracy_of(spec, weights, test):
    """Test accuracy of a Keras model of the spec holding `weights` (argmax of its outputs)."""
    net = Network(spec)
    net.set_vector(weights)
    return float(np.mean(np.argmax(np.asarray(net.model(test.x, training=False)), axis=1) == test.y))


def alpha_loss_by_hand(probs, labels, alpha):
    """The original's alpha-loss: rows divided by their L2 norm; L = mean of -log(p_true) where p_true <= alpha
    (0 elsewhere); alpha_acc = share of samples with p_true > alpha."""
    total, above = 0.0, 0
    for row, label in zip(probs.astype(np.float64), labels):
        p_true = row[label] / math.sqrt(sum(v * v for v in row))
        if p_true > alpha:
            above += 1
        else:
            total -= math.log(p_true)
    return total / len(labels), above / len(labels)


def network_cost_by_hand(store, names):
    """The pair cost of every two tasks on each shared page both occupy: sum over elements whose
    network Fisher is nonzero in both of (F_a + F_b) * (w_a - w_b)^2."""
    P, S = store.num_pages, store.page_size
    vectors = {}
    for name in names:
        rec = store.task(name)
        padded = {kind: np.zeros(rec.num_pages * S) for kind in ("network_fisher", "network_weight")}
        for kind, vector in padded.items():
            vector[:rec.num_weights] = store.load_vector(name, kind)
        on_pool = {int(e): i for i, e in enumerate(rec.page_table) if e < P}
        vectors[name] = (on_pool, padded["network_fisher"], padded["network_weight"])
    total = 0.0
    for a, name_a in enumerate(names):
        for name_b in names[a + 1:]:
            pages_a, fa, wa = vectors[name_a]
            pages_b, fb, wb = vectors[name_b]
            for q in set(pages_a) & set(pages_b):
                i, j = pages_a[q], pages_b[q]
                for k in range(S):
                    f1, f2 = fa[i * S + k], fb[j * S + k]
                    if f1 > 0 and f2 > 0:
                        total += (f1 + f2) * (wa[i * S + k] - wb[j * S + k]) ** 2
    return total


# ---- listing -----------------------------------------------------------------------

def test_no_mode_lists_the_state_as_the_original(tiny_state):
    default = run_main(f"-state_dir={tiny_state}")
    assert default.stdout == run_main("-mode=l", f"-state_dir={tiny_state}").stdout
    lines = default.stdout.splitlines()
    store = Store(tiny_state).load()
    S = store.page_size
    assert lines[0] == "[VNN list]"
    for line, rec in zip(lines[1:3], store.tasks):
        exclusive = sum(len(range(p * S, min((p + 1) * S, rec.num_weights))) for p in rec.exclusive_pages)
        k = len(rec.exclusive_pages)
        assert line == (
            f"Name: {rec.name}, id: {rec.id}, path: {rec.network_path}, num_of_weight: {rec.num_weights} "
            f"({rec.num_weights - exclusive}/{exclusive}), "
            f"num_of_page: {rec.num_pages} ({rec.num_pages - k}/{k})"), line
    assert [rec.name for rec in store.tasks] == ["tiny_a", "tiny_b"]
    assert lines[3:5] == ["", "[Weight page] total 16 weight pages"]
    assert any(line.startswith(f"state {tiny_state}: 2 tasks, pool 16 pages x 64 weights") for line in lines[5:])


# ---- flags out of range: one line, status 2, nothing written --------------------------

BAD_FLAGS = [
    ("-iter=0", "-iter=0"), ("-iter=-5", "-iter=-5"), ("-rounds=0", "-rounds=0"), ("-passes=0", "-passes=0"),
    ("-margin=1.5", "-margin=1.5"), ("-alpha=nan", "-alpha=nan"), ("-lr=nan", "-lr=nan"),
    ("-batch_size=0", "-batch_size=0"), ("-fisher_samples=0", "-fisher_samples=0"),
    ("-page_size=0", "-page_size=0"), ("-num_pages=-1", "-num_pages=-1"),
    ("-page_size=65536 -num_pages=65536", "-num_pages=65536"), ("-Q=16", "-Q=16"), ("-seed=-1", "-seed=-1"),
    ("-transpose=2", "-transpose=2"), ("-target_accuracy=1.5", "-target_accuracy=1.5"),
    ("-mode=zz", "-mode must be one of"),
]


@pytest.mark.parametrize("bad, fragment", BAD_FLAGS, ids=[b for b, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_status_2_and_writes_nothing(tiny_state, tiny_tasks, tmp_path, bad, fragment):
    new = tmp_path / "new"
    result = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={new}", *STATE_FLAGS,
                      *bad.split(), check=False)
    assert_one_line_error(result, fragment)
    assert result.returncode == 2 and result.stdout == ""
    assert not new.exists()
    state = copy_state(tiny_state, tmp_path / "st")
    before = snapshot(state)
    result = run_main("-mode=t", "-vnn_name=tiny_a", f"-state_dir={state}", *bad.split(), check=False)
    assert_one_line_error(result, fragment)
    assert result.returncode == 2 and snapshot(state) == before


def test_stray_arguments_are_one_line_status_2(tiny_state):
    """As absl's app.run does: the arguments left after the flags go to main."""
    import WeightSeparation
    from absl import flags
    from absl.testing import flagsaver
    from weightsep.cli import main_of
    err = io.StringIO()
    with flagsaver.flagsaver(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        flags.FLAGS.unparse_flags()
        left = flags.FLAGS(["WeightSeparation.py", "-mode=l", f"-state_dir={tiny_state}", "l", "extra"])
        code = main_of(WeightSeparation.run)(left)
        flags.FLAGS.unparse_flags()
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue() == "error: unexpected arguments: l extra (flags are written -name=value)\n"


# ---- evaluate ----------------------------------------------------------------------

def test_evaluate_names_the_tasks_of_the_state(tiny_state):
    result = run_main("-mode=e", "-vnn_name=nosuch", f"-state_dir={tiny_state}", check=False)
    assert_one_line_error(result, "nosuch", "tiny_a", "tiny_b")


def test_evaluate_records_the_accuracy_of_the_stored_weights(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    result = run_main("-mode=e", "-vnn_name=tiny_b", f"-state_dir={state}")
    store = Store(state).load()
    test = split_of(store, "tiny_b", "test")
    want = accuracy_of(store.task("tiny_b").task_spec(), store.materialize("tiny_b"), test)
    assert result.stdout == f"tiny_b inference accuracy: {want:.6f}\n"
    assert store.task("tiny_b").accuracy["separated"] == want


def test_evaluate_network_of_a_task_folder(tiny_state, tiny_tasks):
    folder = tiny_tasks["tiny_a"]
    result = run_main("-mode=e", "-target=network", f"-network_path={folder}", f"-state_dir={tiny_state}",
                      "-data=synthetic")
    spec = load_task(folder)
    want = accuracy_of(spec, load_network(spec).get_vector(), datasets.load_split(spec, "test", "synthetic", 0))
    assert result.stdout == f"tiny_a inference accuracy: {want:.6f}\n"


def test_evaluate_network_of_a_task_in_the_state(tiny_state, tiny_tasks):
    """As the original: -vnn_name names a task of the state, whose network it knows."""
    result = run_main("-mode=e", "-target=network", "-vnn_name=tiny_a", f"-state_dir={tiny_state}", "-data=synthetic")
    spec = load_task(tiny_tasks["tiny_a"])
    want = accuracy_of(spec, load_network(spec).get_vector(), datasets.load_split(spec, "test", "synthetic", 0))
    assert result.stdout == f"tiny_a inference accuracy: {want:.6f}\n"


def test_evaluate_a_read_only_state(tiny_state):
    root = Path(tempfile.mkdtemp(prefix="weightsep-cli-ro-"))
    try:
        root.chmod(0o755)
        state = copy_state(tiny_state, root / "st")
        expected = run_main("-mode=e", "-vnn_name=tiny_a", f"-state_dir={copy_state(state, root / 'rw')}").stdout
        for folder, _, files in os.walk(state):
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
            os.chmod(folder, 0o555)
        before = snapshot(state)
        with unprivileged():
            result = run_main("-mode=e", "-vnn_name=tiny_a", f"-state_dir={state}")
        assert result.returncode == 0 and result.stdout == expected
        note = result.stderr.strip()
        assert note.startswith("note: accuracy not recorded") and len(note.splitlines()) == 1, result.stderr
        assert snapshot(state) == before
    finally:
        for folder, _, _ in os.walk(root):
            os.chmod(folder, 0o755)
        shutil.rmtree(root)


def test_evaluate_beside_a_running_writer(tiny_state, tmp_path):
    """-mode=e while another writer (a running -mode=o) holds the lock: it evaluates without
    waiting, says the accuracy was not recorded, and changes nothing."""
    state = copy_state(tiny_state, tmp_path / "st")
    expected = run_main("-mode=e", "-vnn_name=tiny_b", f"-state_dir={copy_state(state, tmp_path / 'free')}").stdout
    with Store(state).writer():
        before = snapshot(state)
        result = run_main("-mode=e", "-vnn_name=tiny_b", f"-state_dir={state}")
        assert snapshot(state) == before
    assert result.returncode == 0 and result.stdout == expected
    assert result.stderr.startswith("note: accuracy not recorded") and "locked by pid" in result.stderr


# ---- diagnostics --------------------------------------------------------------------

def test_overlapping_cost_of_tasks(tiny_state):
    result = run_main("-mode=c", "-vnn_name=tiny_a,tiny_b", f"-state_dir={tiny_state}")
    store = Store(tiny_state).load()
    cost = float(one_value(result.stdout, "total cost:"))
    assert cost == total_network_cost(store, ["tiny_a", "tiny_b"])
    assert cost > 0 and cost == pytest.approx(network_cost_by_hand(store, ["tiny_a", "tiny_b"]), rel=1e-9)
    # One task has no pair: a usage error (not a cost of 0), as is a task named twice.
    for names, message in (("tiny_b", "needs two or more different tasks"), ("tiny_b,tiny_b", "different tasks")):
        result = run_main("-mode=c", f"-vnn_name={names}", f"-state_dir={tiny_state}", check=False)
        assert_one_line_error(result, message)
        assert result.returncode == 2
    result = run_main("-mode=c", "-vnn_name=tiny_a,nosuch", f"-state_dir={tiny_state}", check=False)
    assert_one_line_error(result, "nosuch", "tiny_a, tiny_b")


def test_fisher_of_the_separated_task(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    result = run_main("-mode=f", "-vnn_name=tiny_b", f"-state_dir={state}")
    path = state / "tiny_b" / "tiny_b_fisher.npy"
    assert result.stdout.splitlines()[0] == str(path)
    fisher = np.load(path, allow_pickle=False)
    assert fisher.dtype == np.float32 and fisher.shape == (972,)
    assert fisher.min() == 0.0 and fisher.max() == 1.0
    np.testing.assert_array_equal(Store(state).load().load_vector("tiny_b", "fisher"), fisher)


def test_layers_and_variables(tiny_state):
    # tiny_a: 12x12x1 -> conv 3x3x4 -> 10x10 -> pool 5x5x4 = 100 -> dense 16 -> 4 classes
    # tiny_b: 10x14x2 -> conv 3x3x3 -> 8x12 -> pool 4x6x3 = 72 -> dense 12 -> 3 classes
    expected = {"tiny_a": ("[[3, 3, 1, 4], [16], [4]]", [(3, 3, 1, 4), (4,), (100, 16), (16,), (16, 4), (4,)]),
                "tiny_b": ("[[3, 3, 2, 3], [12], [3]]", [(3, 3, 2, 3), (3,), (72, 12), (12,), (12, 3), (3,)])}
    store = Store(tiny_state).load()
    for name, (layers, shapes) in expected.items():
        assert run_main("-mode=n", f"-vnn_name={name}", f"-state_dir={tiny_state}").stdout == layers + "\n"
        lines = run_main("-mode=v", f"-vnn_name={name}", f"-state_dir={tiny_state}").stdout.splitlines()
        pattern = re.compile(r"<tf\.Variable '([^']+)' shape=\(([\d, ]*)\) dtype=float32>")
        got = [tuple(int(d) for d in pattern.fullmatch(line).group(2).split(",") if d.strip()) for line in lines]
        assert got == shapes
        assert sum(math.prod(s) for s in got) == store.task(name).num_weights


def test_target_loss_alpha_loss_and_tpr(tiny_state, tiny_tasks):
    store = Store(tiny_state).load()
    train = split_of(store, "tiny_a", "train")
    probs = load_network(load_task(tiny_tasks["tiny_a"])).predict(train.x)
    loss, alpha_acc = alpha_loss_by_hand(probs, train.y, 0.5)
    assert 0 < alpha_acc < 1 and loss > 0

    common = ("-vnn_name=tiny_a", f"-state_dir={tiny_state}")
    assert_one_line_error(run_main("-mode=tl", *common, check=False), "-target_accuracy")
    out = run_main("-mode=tl", *common, "-target_accuracy=0.9").stdout
    printed = {key: float(one_value(out, key + ":")) for key in ("alpha_accuracy", "current_loss", "target_loss")}
    assert printed["alpha_accuracy"] == pytest.approx(alpha_acc, abs=1e-12)
    assert printed["current_loss"] == pytest.approx(loss, rel=1e-5)
    assert printed["target_loss"] == pytest.approx(loss * (alpha_acc + 1 - 0.9), rel=1e-5)
    assert printed["target_loss"] == separation.target_loss(printed["current_loss"], printed["alpha_accuracy"], 0.9)
    # The original's lines in its order: compute_target_loss, its pintle's accuracy line (on the
    # training split), compute_loss with its batch ranges of 30,000, then the values.
    accuracy = np.mean(probs.argmax(axis=1) == train.y)
    target_lines = ["compute_target_loss", f"tiny_a inference accuracy: {accuracy:f}", "compute_loss", "0 30000"]
    lines = out.splitlines()
    assert lines[:4] == target_lines
    assert [line.split(":")[0] for line in lines[4:]] == ["alpha_accuracy", "current_loss", "target_loss"]
    assert lines[6].startswith("target_loss:  ")  # print('target_loss: ', x): two spaces

    out = run_main("-mode=cl", *common).stdout
    assert float(one_value(out, "loss:")) == printed["current_loss"]
    assert out.splitlines()[:3] == ["compute_loss", "0 30000", f"loss: {printed['current_loss']}"]

    out = run_main("-mode=tpr", *common).stdout
    assert one_value(out, "Target performance rate:") == "1.0"
    # The state's margin (0.6, as the task was added, TPR 1.0) gives the task's own exclusive pages.
    rec = store.task("tiny_a")
    assert rec.settings["margin"] == TINY_OPTIONS["margin"] != 0.1
    assert one_value(out, "tiny_a:") == (f"{len(rec.exclusive_pages)} exclusive pages {rec.exclusive_pages} "
                                         f"(margin {TINY_OPTIONS['margin']:g}, as the task was added)")
    assert one_value(run_main("-mode=tpr", *common, "-margin=0.1").stdout, "tiny_a:").endswith("(margin 0.1, -margin)")
    out = run_main("-mode=tpr", *common, "-target_accuracy=0.9").stdout
    assert out.splitlines()[:6] == ["compute_loss", "0 30000", *target_lines]
    assert out.splitlines()[8].startswith("Target performance rate: ")
    target_loss = loss * (alpha_acc + 1 - 0.9)
    assert float(one_value(out, "Target performance rate:")) == pytest.approx(
        max(0.0, 1 - (target_loss - loss) / loss), rel=1e-5)


# ---- pretrain, missing inputs ---------------------------------------------------------

def test_pretrain_saves_the_network_it_reports(tmp_path):
    folder = write_task_folder(tmp_path, "clitask", input_shape=(8, 8, 1), num_classes=3, conv=((3, 3, 2),),
                               dense=(6,))
    lines = run_main("-mode=pretrain", f"-network_path={folder}", "-data=synthetic", "-iter=30",
                     "-verbose=0").stdout.splitlines()
    assert lines[0].startswith("pretrain clitask: 30 steps, batch 100")
    spec = load_task(folder)
    assert (folder / "clitask.weights.h5").is_file()
    want = accuracy_of(spec, load_network(spec).get_vector(), datasets.load_split(spec, "test", "synthetic", 0))
    assert lines[-1] == f"clitask inference accuracy: {want:.6f}"


def test_missing_data_network_and_state_are_one_line_errors(tmp_path, monkeypatch):
    folder = copy_task_folder(tmp_path, "svhn")
    result = run_main("-mode=pretrain", f"-network_path={folder}", check=False)
    assert_one_line_error(result, "svhn_train_data.npy", "./download_dataset.sh svhn")
    folder = copy_task_folder(tmp_path, "mnist")
    result = run_main("-mode=a", f"-network_path={folder}", f"-state_dir={tmp_path / 'st'}", "-data=synthetic",
                      check=False)
    assert_one_line_error(result, "mnist.weights.h5 is missing", "-mode=pretrain")
    # The hint looks for the demo's state under the working directory: run where none is, then where one is.
    monkeypatch.chdir(tmp_path)
    result = run_main("-mode=e", "-vnn_name=mnist", f"-state_dir={tmp_path / 'empty'}", check=False)
    assert_one_line_error(result, "no separated state in", "formation.sh -state_dir=")
    assert not (tmp_path / "empty").exists()
    (tmp_path / "demo_out" / "state").mkdir(parents=True)
    (tmp_path / "demo_out" / "state" / "weightsep_state.json").write_text("{}")
    result = run_main("-mode=e", "-vnn_name=mnist", f"-state_dir={tmp_path / 'empty'}", check=False)
    assert_one_line_error(result, "no separated state in", "the demo's is in demo_out/state: run ")
    assert "-state_dir=demo_out/state" in result.stderr
    assert not (tmp_path / "empty").exists()
    # An add that fails before it has anything to add leaves no state directory behind.
    assert not (tmp_path / "st").exists(), sorted(p.name for p in (tmp_path / "st").iterdir())


# ---- train, add ----------------------------------------------------------------------

def test_train_prints_the_original_lines_and_rewrites_the_weight_vector(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    steps_before = Store(state).load().task("tiny_b").settings["trained_steps"]
    lines = run_main("-mode=t", "-vnn_name=tiny_b", "-iter=102", f"-state_dir={state}").stdout.splitlines()
    number = r"(-?\d+\.\d{6})"
    train = re.compile(rf"step (\d+), training accuracy: {number} original loss: {number} overlapping loss: {number}")
    valid = re.compile(rf"step (\d+), Validation accuracy: {number} \(test split, as the original\)")
    steps = [int(m.group(1)) for m in map(train.fullmatch, lines) if m]
    assert steps == [0, 100, 101]  # i % 100 == 0 and i == iter - 1
    for step in steps:
        i = lines.index(next(line for line in lines if line.startswith(f"step {step}, training")))
        assert valid.fullmatch(lines[i + 1]) and lines[i + 1].startswith(f"step {step}, ")
    kept = re.compile(r"get new weight for 0\.\d{6}")
    assert lines[:2] == ["get_overlapping_loss", "v_train"]  # the original's, before its loop
    for line in lines[2:-1]:
        assert train.fullmatch(line) or valid.fullmatch(line) or kept.fullmatch(line), line
    store = Store(state).load()
    assert lines[-1].startswith("tiny_b: ")
    assert lines[-1].endswith(f"{state / 'tiny_b' / 'tiny_b_weight.npy'} rewritten")
    assert store.task("tiny_b").settings["trained_steps"] == steps_before + 102
    np.testing.assert_array_equal(store.load_vector("tiny_b", "weight"), store.materialize("tiny_b"))


def test_add_to_a_second_state(tiny_tasks, tmp_path):
    state = tmp_path / "second"
    first = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}", *STATE_FLAGS)
    assert float(one_value(first.stdout, "total_network_cost:")) == 0.0  # one task: no pair yet
    before = snapshot(state)
    result = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_b']}", f"-state_dir={state}", "-page_size=128",
                      "-data=synthetic", check=False)
    assert_one_line_error(result, "-page_size=128", "page_size 64")
    assert snapshot(state) == before
    second = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_b']}", f"-state_dir={state}", *STATE_FLAGS)
    store = Store(state).load()
    assert [r.name for r in store.tasks] == ["tiny_a", "tiny_b"]
    cost = float(one_value(second.stdout, "total_network_cost:"))
    assert cost == total_network_cost(store) and cost == pytest.approx(
        network_cost_by_hand(store, ["tiny_a", "tiny_b"]), rel=1e-9)


# ---- quantize ------------------------------------------------------------------------

def test_quantize_makes_an_int8_copy_and_reports_accuracies(tiny_state, tmp_path):
    source = copy_state(tiny_state, tmp_path / "st")
    before = snapshot(source)
    dest = tmp_path / "int8"
    lines = run_main("-mode=quantize", f"-state_dir={source}", f"-out_dir={dest}", "-page_dtype=int8").stdout
    assert snapshot(source) == before
    old, new = Store(source).load(), Store(dest).load()
    assert new.page_dtype == "int8" and (new.page_size, new.num_pages) == (old.page_size, old.num_pages)
    for rec in old.tasks:
        assert np.array_equal(new.task(rec.name).page_table, rec.page_table)
        test = split_of(old, rec.name, "test")
        acc_before = accuracy_of(rec.task_spec(), old.materialize(rec.name), test)
        acc_after = accuracy_of(rec.task_spec(), new.materialize(rec.name), test)
        assert one_value(lines, f"{rec.name} inference accuracy:").startswith(f"{acc_before:.6f} -> {acc_after:.6f}")
        assert new.task(rec.name).accuracy["separated"] == acc_after
    result = run_main("-mode=quantize", f"-state_dir={source}", f"-out_dir={dest}", "-page_dtype=int8", check=False)
    assert_one_line_error(result, str(dest))
    result = run_main("-mode=quantize", f"-state_dir={source}", f"-out_dir={tmp_path / 'f32'}", check=False)
    assert_one_line_error(result, "-page_dtype")
    assert result.returncode == 2 and not (tmp_path / "f32").exists()


# ---- broken states --------------------------------------------------------------------

def test_state_dir_that_is_a_file(tiny_tasks, tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a state")
    for args in (["-mode=l"], ["-mode=a", f"-network_path={tiny_tasks['tiny_a']}", *STATE_FLAGS]):
        result = run_main(*args, f"-state_dir={path}", check=False)
        assert_one_line_error(result, str(path), "is a file")
    assert path.read_text() == "not a state"


def resign(registry):
    """The registry with its checksum recomputed as weightsep/store/registry.py says: the SHA-256 of the
    canonical JSON (sorted keys, no spaces, ASCII) of everything but the checksum."""
    body = {k: v for k, v in registry.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return dict(body, checksum=hashlib.sha256(canonical).hexdigest())


def test_corrupt_registry_is_one_line_naming_the_file(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    path = state / "weightsep_state.json"
    good = json.loads(path.read_text())
    edited = json.loads(path.read_text())
    edited["tasks"][0]["page_table"][0] = 1  # a valid-looking entry: only the checksum tells
    path.write_text(json.dumps(edited))
    assert_one_line_error(run_main("-mode=l", f"-state_dir={state}", check=False), str(path), "checksum")
    edited["tasks"][0]["page_table"][0] = 10_000  # out of range, with a checksum that matches
    path.write_text(json.dumps(resign(edited)))
    for mode in (["-mode=l"], ["-mode=e", "-vnn_name=tiny_b"]):
        result = run_main(*mode, f"-state_dir={state}", check=False)
        assert_one_line_error(result, str(path), "tiny_a")
        assert result.returncode == 1
    path.write_text(json.dumps(resign(good)))  # the reader of the checksum above is right
    assert run_main("-mode=l", f"-state_dir={state}").stdout.splitlines()[0] == "[VNN list]"


def test_readme_lists_the_modes_of_the_table():
    """README's list of modes is -help's, made from the one table of modes."""
    import WeightSeparation
    assert f"```\n{WeightSeparation.modes_help()}\n```" in (REPO / "README.md").read_text()
