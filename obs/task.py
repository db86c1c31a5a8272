"""Obstacle avoidance (camera frames): the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="obs",
    input_shape=(45, 80, 1),
    num_classes=4,
    conv=((12, 24, 8), (3, 3, 32), (3, 3, 32)),
    dense=(128, 128),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="npy",
        train=("obstacle_train_data.npy", "obstacle_train_label.npy"),
        test=("obstacle_test_data.npy", "obstacle_test_label.npy"),
        validation=("obstacle_validation_data.npy", "obstacle_validation_label.npy"),
    ),
    paper_num_weights=72012,
)
