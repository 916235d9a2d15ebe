"""volnas: find, train and explain 3D CNNs that classify medical volumes.

Pipeline, one sub-package per stage, each importing only the ones before it:
data -> models -> training -> search -> explain -> deploy -> benchmark -> cli.
"""

__version__ = "0.1.0"
