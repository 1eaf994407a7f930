"""The DICOM upper layer and DIMSE messages, shared by the receiver (SCP) and the sender (SCU)."""
