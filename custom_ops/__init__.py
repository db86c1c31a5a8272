"""TensorFlow custom ops PageGather and PageGatherQuantized: materialize a task's weights from weight-pages.

Use them through the wrapper modules (kept apart so that the functions do not
shadow the modules' names):

    from custom_ops.page_gather import PageGatherError, available, page_gather, page_gather_reference
    from custom_ops.page_gather_quantized import page_gather_quantized, page_gather_quantized_reference

This package imports nothing of its users. README.md beside this file says how
to build the library and run the CUDA harnesses.
"""
