"""ESC-10 environmental sound classification: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="esc10",
    input_shape=(60, 41, 2),
    num_classes=10,
    conv=((12, 6, 8), (3, 3, 16), (3, 3, 32)),
    dense=(128, 64),
    dense_activation="sigmoid",
    data=DataFiles(
        format="npy",
        train=("esc10_train_data.npy", "esc10_train_label.npy"),
        test=("esc10_test_data.npy", "esc10_test_label.npy"),
    ),
    paper_num_weights=65154,
)
