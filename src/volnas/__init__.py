"""volnas: find, train and explain 3D CNNs that classify medical volumes.

Pipeline, one sub-package per stage: data -> models -> search -> training -> explain -> cli.
"""

__version__ = "0.1.0"
