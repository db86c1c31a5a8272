"""CIFAR-10 image classification: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="cifar10",
    input_shape=(32, 32, 3),
    num_classes=10,
    conv=((3, 3, 16), (3, 3, 32), (3, 3, 52)),
    dense=(128, 128),
    dense_activation="sigmoid",
    data=DataFiles(
        format="npy",
        train=("cifar10_train_data.npy", "cifar10_train_label.npy"),
        test=("cifar10_test_data.npy", "cifar10_test_label.npy"),
    ),
    paper_num_weights=64670,
)
