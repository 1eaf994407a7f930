"""How caduceus identifies itself on the DICOM network and in the files it writes."""

from caduceus import __version__

IMPLEMENTATION_CLASS_UID = "2.25.55574430192034161758096448551242300888"
IMPLEMENTATION_VERSION = f"CADUCEUS_{__version__}"[:16]
