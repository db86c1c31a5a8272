"""Heterogeneous Human Activity Recognition (IMU): the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="hhar",
    input_shape=(20, 120, 1),
    num_classes=6,
    conv=((3, 3, 8), (3, 3, 32), (2, 3, 64)),
    dense=(60,),
    dense_activation="sigmoid",
    data=DataFiles(
        format="npy",
        train=("hhar_train_data.npy", "hhar_train_label.npy"),
        test=("hhar_test_data.npy", "hhar_test_label.npy"),
    ),
    paper_num_weights=65114,
)
