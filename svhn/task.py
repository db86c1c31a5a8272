"""Street View House Numbers: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="svhn",
    input_shape=(32, 32, 3),
    num_classes=10,
    conv=((3, 3, 16), (3, 3, 32), (3, 3, 52)),
    dense=(128, 128),
    dense_activation="sigmoid",
    data=DataFiles(
        format="npy",
        train=("svhn_train_data.npy", "svhn_train_label.npy"),
        test=("svhn_test_data.npy", "svhn_test_label.npy"),
        validation=("svhn_validation_data.npy", "svhn_validation_label.npy"),
    ),
    paper_num_weights=64670,
)
