"""Tests of weightsep.tasks: specs as JSON data (round trip, hostile input), copy_spec, weight counts."""

import copy
import json

import pytest

from weightsep.errors import WeightSepError
from weightsep.tasks import PAPER_TASKS, REPO_ROOT, TaskSpec, copy_spec, declared_num_weights, load_task

# The weight counts the paper reports for its ten networks (docs/NETWORKS.md).
PAPER_WEIGHTS = {"cifar10": 64670, "mnist": 65402, "fmnist": 69966, "gtsrb": 68639, "svhn": 64670,
                 "obs": 72012, "gsc": 65101, "esc10": 65154, "us8k": 66854, "hhar": 65114}


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_json_round_trip_of_repository_tasks(name, tmp_path):
    spec = load_task(name)
    data = spec.to_json()
    text = json.dumps(data, allow_nan=False)  # plain JSON, nothing a parser could not give back
    again = TaskSpec.from_json(json.loads(text), folder=tmp_path)
    assert again == TaskSpec.from_json(data, folder=tmp_path)
    assert again.to_json() == data
    assert again.folder == tmp_path and again.path("x.npy") == tmp_path / "x.npy"
    # Everything but the folder is the task.py's spec.
    assert TaskSpec.from_json(data, folder=spec.folder) == spec
    assert data["custom_model"] is False and data["name"] == name
    assert declared_num_weights(spec) == PAPER_WEIGHTS[name] == data["paper_num_weights"]


def test_cifar10_json_is_exactly_the_declared_spec():
    assert load_task("cifar10").to_json() == {
        "name": "cifar10", "input_shape": [32, 32, 3], "num_classes": 10,
        "conv": [[3, 3, 16], [3, 3, 32], [3, 3, 52]], "dense": [128, 128], "dense_activation": "sigmoid",
        "data": {"format": "npy", "train": ["cifar10_train_data.npy", "cifar10_train_label.npy"],
                 "test": ["cifar10_test_data.npy", "cifar10_test_label.npy"], "validation": None},
        "paper_num_weights": 64670, "custom_model": False}


def test_custom_model_spec_is_flagged_and_comes_back_without_function():
    spec = TaskSpec(name="mlp", input_shape=(4, 4, 1), num_classes=3, build_model=lambda: None)
    data = spec.to_json()
    assert data["custom_model"] is True and data["conv"] == [] and data["dense"] == []
    again = TaskSpec.from_json(data)
    assert again.custom_model and again.build_model is None
    assert again.to_json() == data
    assert declared_num_weights(again) is None


def base_spec():
    return load_task("svhn").to_json()


def change(path, value):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return apply


DELETE = object()

HOSTILE = {
    "negative classes": (change(["num_classes"], -3), "num_classes is -3"),
    "zero height": (change(["input_shape"], [0, 32, 3]), "input_shape H is 0"),
    "huge classes": (change(["num_classes"], 10**12), "num_classes is 1000000000000"),
    "huge input": (change(["input_shape"], [60000, 60000, 3]), "values per example"),
    "huge dense": (change(["dense"], [65536, 65536, 65536]), "weights, more than"),
    "huge conv output": (lambda d: d.update(input_shape=[64, 64, 3], conv=[[1, 1, 65536]]), "conv[0] outputs"),
    "kernel larger than input": (change(["conv", 0], [40, 3, 16]), "does not fit"),
    "too many layers": (change(["dense"], [8] * 65), "at most 64"),
    "negative filters": (change(["conv", 1], [3, 3, -32]), "conv[1] filters is -32"),
    "float units": (change(["dense", 0], 128.0), "dense[0] units is 128.0"),
    "bool classes": (change(["num_classes"], True), "num_classes is True"),
    "string classes": (change(["num_classes"], "10"), "num_classes is '10'"),
    "shape of two": (change(["input_shape"], [32, 32]), "input_shape (H, W, C)"),
    "dotdot file": (change(["data", "train", 0], "../../etc/passwd"), "'..'"),
    "dotdot inside": (change(["data", "test", 1], "a/../../b.npy"), "'..'"),
    "absolute file": (change(["data", "test", 0], "/etc/passwd"), "absolute path"),
    "backslash file": (change(["data", "test", 0], "..\\x.npy"), "backslash"),
    "empty file name": (change(["data", "train", 1], ""), "non-empty file name"),
    "file name not a string": (change(["data", "train", 1], 7), "non-empty file name"),
    "one file only": (change(["data", "train"], ["a.npy"]), "expected [data file, label file]"),
    "unknown format": (change(["data", "format"], "pickle"), "data format is 'pickle'"),
    "unknown data key": (change(["data", "loader"], "x"), "unknown key(s) 'loader'"),
    "unknown key": (change(["build_model"], "os.system('x')"), "unknown key(s) 'build_model'"),
    "unknown activation": (change(["dense_activation"], "relu6"), "dense_activation is 'relu6'"),
    "name with slash": (change(["name"], "../svhn"), "not a plain folder name"),
    "name starting with dot": (change(["name"], ".svhn"), "not a plain folder name"),
    "missing classes": (change(["num_classes"], DELETE), "'num_classes' is missing"),
    "custom not bool": (change(["custom_model"], "yes"), "custom_model is 'yes'"),
    "no layers": (lambda d: d.update(conv=[], dense=[]), "no layers"),
    "paper weights negative": (change(["paper_num_weights"], -1), "paper_num_weights is -1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_specs_give_one_line_errors(case):
    edit, phrase = HOSTILE[case]
    data = copy.deepcopy(base_spec())
    edit(data)
    with pytest.raises(WeightSepError) as error:
        TaskSpec.from_json(data)
    message = str(error.value)
    assert phrase in message and "\n" not in message and message.startswith("task spec")


@pytest.mark.parametrize("data", [None, [], "svhn", 3])
def test_spec_that_is_not_an_object(data):
    with pytest.raises(WeightSepError, match="must be a JSON object"):
        TaskSpec.from_json(data)


def test_task_py_with_absurd_spec_is_rejected_at_construction():
    with pytest.raises(WeightSepError, match="num_classes is 0"):
        TaskSpec(name="x", input_shape=(4, 4, 1), num_classes=0, dense=(3,))
    with pytest.raises(WeightSepError, match="malformed"):
        TaskSpec(name="x", input_shape=5, num_classes=2, dense=(3,))


def test_copy_spec(tmp_path):
    folder = copy_spec("cifar10", tmp_path / "networks")
    assert folder == tmp_path / "networks" / "cifar10"
    assert (folder / "task.py").read_bytes() == (REPO_ROOT / "cifar10" / "task.py").read_bytes()
    assert load_task(folder).to_json() == load_task("cifar10").to_json()
    again = copy_spec(load_task("hhar"), tmp_path / "networks")  # from a spec, into the same root
    assert sorted(p.name for p in (tmp_path / "networks").iterdir()) == ["cifar10", "hhar"]
    assert copy_spec(again, tmp_path / "networks") == again  # onto itself: nothing to do
    assert not [p for p in folder.iterdir() if p.name != "task.py"]  # no temp files left
    with pytest.raises(WeightSepError, match="unknown task 'nosuch'"):
        copy_spec("nosuch", tmp_path)
