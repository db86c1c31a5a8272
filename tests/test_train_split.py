"""The training data, as the original: a task without validation files trains, draws its Fisher
examples and measures its training accuracy on the WHOLE train files; a validation part is cut
off only when something uses it (-select_on=validation, or -validation_split)."""

import numpy as np
import pytest

from conftest import run_main
from weightsep import data as datasets
from weightsep import fisher as fisher_lib
from weightsep import separation
from weightsep.pipeline import Options, Session
from weightsep.store import Store
from weightsep.tasks import load_task
from weightsep.training import SeparatedTrainer, pretrain_task

N_TRAIN, N_TEST = 157, 40   # 157 // 10 = 15 examples held back when a 10% validation split is cut
SHAPE, CLASSES = (8, 8, 1), 3


@pytest.fixture(scope="module")
def plain_task(tmp_path_factory):
    """A task folder with real-format .npy files and no validation files (like seven of the ten
    tasks), and its network (pretrained on synthetic data of the same shapes)."""
    folder = tmp_path_factory.mktemp("plain") / "plain"
    folder.mkdir()
    (folder / "task.py").write_text(
        "from weightsep.tasks import DataFiles, TaskSpec\n\n"
        f"TASK = TaskSpec(name='plain', input_shape={SHAPE}, num_classes={CLASSES}, conv=((3, 3, 2),), "
        "dense=(8,), dense_activation='leaky_relu',\n"
        "                data=DataFiles(format='npy', train=('plain_train_data.npy', 'plain_train_label.npy'),\n"
        "                               test=('plain_test_data.npy', 'plain_test_label.npy')))\n")
    rng = np.random.default_rng(7)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        # Each example carries its index in its first pixel: what a caller received is countable.
        x = rng.random((n, *SHAPE), dtype=np.float32)
        x[:, 0, 0, 0] = np.arange(n)
        np.save(folder / f"plain_{split}_data.npy", x)
        np.save(folder / f"plain_{split}_label.npy", np.arange(n) % CLASSES)
    pretrain_task(load_task(folder), "synthetic", iters=10, batch_size=20, verbose=0)
    return folder


@pytest.fixture
def seen(monkeypatch):
    """Spies on the consumers of training data: {consumer: [example indices it received]}."""
    calls = {"fisher": [], "tpr": [], "train": [], "select": []}
    fisher, tpr, train = fisher_lib.compute_fisher, separation.target_performance_rate, SeparatedTrainer.train

    def spy_fisher(net, w, x_train, *args, **kwargs):
        calls["fisher"].append(x_train[:, 0, 0, 0].astype(int).tolist())
        return fisher(net, w, x_train, *args, **kwargs)

    def spy_tpr(probs, labels, *args, **kwargs):
        calls["tpr"].append(len(labels))
        return tpr(probs, labels, *args, **kwargs)

    def spy_train(self, x_train, y_train, x_sel, y_sel, *args, **kwargs):
        calls["train"].append(x_train[:, 0, 0, 0].astype(int).tolist())
        calls["select"].append(x_sel[:, 0, 0, 0].astype(int).tolist())
        return train(self, x_train, y_train, x_sel, y_sel, *args, **kwargs)

    monkeypatch.setattr(fisher_lib, "compute_fisher", spy_fisher)
    monkeypatch.setattr(separation, "target_performance_rate", spy_tpr)
    monkeypatch.setattr(SeparatedTrainer, "train", spy_train)
    return calls


def add_and_train(folder, state, *flags):
    common = (f"-state_dir={state}", "-page_size=64", "-num_pages=16", "-batch_size=20", *flags)
    run_main("-mode=a", f"-network_path={folder}", "-target_accuracy=0.5", *common)
    return run_main("-mode=t", "-vnn_name=plain", f"-network_path={folder}", "-iter=3", *common)


def test_default_run_sees_every_training_example(plain_task, seen, tmp_path):
    """-mode=a (Fisher, TPR) and -mode=t (training, training accuracy) on all 157 examples;
    model selection on the test split, as the original."""
    add_and_train(plain_task, tmp_path / "st")
    everything = list(range(N_TRAIN))
    assert seen["tpr"] == [N_TRAIN]
    assert seen["train"] == [everything]
    assert seen["select"] == [list(range(N_TEST))]
    assert seen["fisher"] == [everything]   # the 50 Fisher examples are drawn from all 157
    # Every other reader of the training split (-mode=f, loss, cl, tl, tpr) goes through the session.
    session = Session(Store(tmp_path / "st").load(), Options())
    assert len(session.split("plain", "train")) == N_TRAIN


def test_select_on_validation_holds_the_last_tenth_back(plain_task, seen, tmp_path):
    add_and_train(plain_task, tmp_path / "st", "-select_on=validation")
    held = N_TRAIN // 10
    assert seen["train"] == [list(range(N_TRAIN - held))]
    assert seen["select"] == [list(range(N_TRAIN - held, N_TRAIN))]
    assert seen["tpr"] == [N_TRAIN - held]
    assert seen["fisher"] == [list(range(N_TRAIN - held))]


def test_explicit_validation_split(plain_task, seen, tmp_path):
    """-validation_split=0.25 holds 39 examples back, even with the original's test selection."""
    add_and_train(plain_task, tmp_path / "st", "-validation_split=0.25")
    assert seen["train"] == [list(range(N_TRAIN - 39))]
    assert seen["select"] == [list(range(N_TEST))]


def test_no_flag_other_than_a_validation_user_holds_examples_back(plain_task):
    """Every default Options path: the session's train split is the whole file; only
    select_on=validation (or an explicit fraction) cuts it."""
    store = Store(plain_task / "unused")
    assert Session(store, Options()).validation_split() == 0.0
    assert Session(store, Options(select_on="validation")).validation_split() == datasets.DEFAULT_VALIDATION_SPLIT
    assert Session(store, Options(validation_split=0.3)).validation_split() == 0.3
    assert Session(store, Options(loss="per_example", matching="optimal", init="merge")).validation_split() == 0.0
