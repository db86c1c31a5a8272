"""Google Speech Commands v2 (keyword spotting): the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="gsc",
    input_shape=(61, 13, 1),
    num_classes=35,
    conv=((12, 6, 14), (6, 3, 28)),
    dense=(128, 128),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="npy",
        train=("gsc_v2_train_data.npy", "gsc_v2_train_label.npy"),
        test=("gsc_v2_test_data.npy", "gsc_v2_test_label.npy"),
        validation=("gsc_v2_validation_data.npy", "gsc_v2_validation_label.npy"),
    ),
    paper_num_weights=65101,
)
