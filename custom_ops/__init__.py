"""TensorFlow custom op PageGather: materialize a task's weights from weight-pages.

Use it through the wrapper module (kept apart so that the function does not
shadow the module's name):

    from custom_ops.page_gather import available, page_gather, page_gather_reference

README.md beside this file says how to build the library and run the CUDA harness.
"""
