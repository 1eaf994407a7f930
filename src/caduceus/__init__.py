"""caduceus: a DICOM orchestrator."""

__version__ = "0.1.0"
