"""What every stage of the pipeline shares: atomic file writing and safetensors I/O, the
torchrun rank information, console output that keeps user text literal, crash points."""
