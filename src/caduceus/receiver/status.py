"""C-STORE response statuses (PS3.4 B.2.3 and PS3.7 C), with the codes we use for failures."""

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
TOO_LARGE = 0xA701  # a deflated dataset inflates past receiver_max_inflated_mb
SOP_CLASS_MISMATCH = 0xA900  # the dataset is not of the SOP class the command announced
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_DECODE = 0xC210  # truncated or malformed dataset
MISSING_ATTRIBUTE = 0xC211  # no Study, Series or SOP Instance UID
INSTANCE_MISMATCH = 0xC212  # dataset's SOP Instance UID differs from the command's
PROCESSING_FAILURE = 0x0110  # our fault (database unreachable, ...): the sender should retry
UNRECOGNIZED_OPERATION = 0x0211
