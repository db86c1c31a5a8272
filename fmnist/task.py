"""Fashion-MNIST clothing images: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="fmnist",
    input_shape=(28, 28, 1),
    num_classes=10,
    conv=((3, 3, 24), (3, 3, 32), (3, 3, 52)),
    dense=(256, 128),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="npy",
        train=("fmnist_train_data.npy", "fmnist_train_label.npy"),
        test=("fmnist_test_data.npy", "fmnist_test_label.npy"),
    ),
    paper_num_weights=69966,
)
