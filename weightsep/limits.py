"""Limits and file names shared by the CLI, the store, the export and the tasks module (one source).

The limits keep any flag, spec or state file, however hostile, from asking for
absurd memory; each is checked where input arrives (flags before any work, a
registry before any array is read, a spec before any layer is built).
"""

# A task's network: at most 2**28 trainable weights (1 GiB of float32).
MAX_WEIGHTS = 1 << 28

# The shared pool: P pages of S weights, P x S capped at 2**27 weights (512 MiB of float32).
# The store holds the pool in memory twice (as used and as stored) and training adds its copies,
# so 2**27 is what a workstation holds; the CLI has always refused larger pools, so no state the
# CLI made is refused by the store, whose own bound used to be 2**30 (4 GiB a copy).
MAX_PAGE_SIZE = 1 << 20
MAX_NUM_PAGES = 1 << 20
MAX_POOL_WEIGHTS = 1 << 27

# The names of the page formats a state can store (each defined in weightsep.pageformat); here so
# that the CLI can offer them without importing NumPy.
PAGE_DTYPES = ("float32", "int8", "int4")

# The export's int16 Q-format (-Q): 0 to 15 fraction bits.
MAX_Q = 15

# The files of a state directory (docs/FORMAT.md).
SHARED_FILE = "shared_weight_page.npy"
EXCLUSIVE_FILE = "exclusive_weight_page.npy"
SHARED_SCALE_FILE = "shared_weight_scale.npy"
EXCLUSIVE_SCALE_FILE = "exclusive_weight_scale.npy"
SHARED_WIDE_FILE = "shared_weight_wide.npy"        # int4 states: the int8 pages' low nibbles
EXCLUSIVE_WIDE_FILE = "exclusive_weight_wide.npy"
SHARED_BITS_FILE = "shared_weight_bits.npy"        # int4 states: each page's kind, 4 or 8
EXCLUSIVE_BITS_FILE = "exclusive_weight_bits.npy"
SHARED_MASTER_FILE = "shared_weight_master.npy"    # quantized states: float32 master values of every page
EXCLUSIVE_MASTER_FILE = "exclusive_weight_master.npy"
REGISTRY_FILE = "weightsep_state.json"
LOCK_FILE = ".weightsep.lock"

# The execution scripts' choices and defaults, which the library's runtimes take as theirs too (the
# scripts define their flags without importing TensorFlow).  The baseline's default restores a
# TF checkpoint, the counterpart of the original's saver.restore.
BASELINES = ("checkpoint", "file", "raw")
DEFAULT_BASELINE = "checkpoint"
SECONDARIES = ("disk", "host")
GATHERS = ("auto", "numpy", "op", "tf")
DEFAULT_GATHER = "auto"

# A task's name (its folder's name): letters, digits, _ . -, starting with a letter or digit.
TASK_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_NAME_LENGTH = 100

# int4 states (weightsep.pageformat): weights per float16 scale at most (-group_size), and the share
# of pages stored as int8 (-int8_pages), both measured on the demo's state (issue 17's table:
# int8 on the 10% of pages with the most Fisher + int4 in groups of 64 gave -0.46 points at 37.4x;
# 5% of int8 pages was not enough, 15-20% gained nothing).
DEFAULT_GROUP_SIZE = 64
DEFAULT_INT8_PAGES = 0.1
