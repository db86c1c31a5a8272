"""MNIST handwritten digits: the task's network and data files (docs/NETWORKS.md)."""

from weightsep.tasks import DataFiles, TaskSpec

TASK = TaskSpec(
    name="mnist",
    input_shape=(28, 28, 1),
    num_classes=10,
    conv=((3, 3, 16), (3, 3, 32), (3, 3, 48)),
    dense=(256, 128),
    dense_activation="leaky_relu",
    data=DataFiles(
        format="mnist_idx",
        train=("MNIST_data/train-images-idx3-ubyte.gz", "MNIST_data/train-labels-idx1-ubyte.gz"),
        test=("MNIST_data/t10k-images-idx3-ubyte.gz", "MNIST_data/t10k-labels-idx1-ubyte.gz"),
    ),
    paper_num_weights=65402,
)
