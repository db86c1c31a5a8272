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
REGISTRY_FILE = "weightsep_state.json"
LOCK_FILE = ".weightsep.lock"

# A task's name (its folder's name): letters, digits, _ . -, starting with a letter or digit.
TASK_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_NAME_LENGTH = 100
