"""AlignOps: one manifest for a whole LLM alignment pipeline, on a laptop or a Kubernetes cluster."""

__version__ = "0.1.0"

GROUP = "alignops.io"
VERSION = "v1alpha1"
KIND = "AlignmentJob"
PLURAL = "alignmentjobs"
API_VERSION = f"{GROUP}/{VERSION}"
