"""UrbanSound8K sound classification: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="us8k",
    input_shape=(60, 41, 2),
    num_classes=10,
    conv=((3, 3, 8), (3, 3, 16), (3, 3, 32)),
    dense=(124,),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="npy",
        train=("US8K_train_data.npy", "US8K_train_label.npy"),
        test=("US8K_test_data.npy", "US8K_test_label.npy"),
    ),
    paper_num_weights=66854,
)
