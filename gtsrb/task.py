"""German Traffic Sign Recognition Benchmark: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="gtsrb",
    input_shape=(32, 32, 1),
    num_classes=43,
    conv=((3, 3, 16), (3, 3, 32), (3, 3, 52)),
    dense=(128, 128),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="npy",
        train=("GTSRB_train_data.npy", "GTSRB_train_label.npy"),
        test=("GTSRB_test_data.npy", "GTSRB_test_label.npy"),
    ),
    paper_num_weights=68639,
)
