"""TensorFlow custom ops PageGather, PageGatherQuantized and PageGatherQuantizedMixed: a task's weights
from its weight-pages (float32, int8, and the mixed int4 / int8 pages of int4 states).

Use them through the wrapper modules (kept apart so that the functions do not
shadow the modules' names):

    from custom_ops.page_gather import PageGatherError, available, page_gather
    from custom_ops.page_gather_quantized import page_gather_quantized, page_gather_quantized_mixed

This package imports nothing of its users (weightsep included): its kernels
decode pages themselves, and the tests check them bit for bit against
weightsep/pageformat.py, the one definition of the page encodings. README.md beside this file says how
to build the library and run the CUDA harnesses.
"""
