"""Weight Separation: pack many DNNs into one shared pool of weight-pages plus exclusive pages.

A reproduction of "Weight Separation for Memory-Efficient and Accurate Deep
Multitask Learning" (PerCom 2022) on TensorFlow 2.  The library is organised
one concern per module: tasks, data, networks, pages, fisher, separation,
matching, store, training, runtime, report.
"""

__version__ = "0.1.0"
