"""Import TensorFlow and Keras quietly.

TensorFlow's C++ runtime prints start-up notices (oneDNN, CPU features) straight to
the process's stderr before any Python logging is set up.  We silence the file
descriptor for the duration of the import only; set WS_TF_VERBOSE=1 to see them.
Python exceptions raised by the import are unaffected.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def _quiet_stderr():
    if os.environ.get("WS_TF_VERBOSE") or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_stderr():
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
