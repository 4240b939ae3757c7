"""omi-batch: offboard contact-centre agents on OMICall, one audited batch at a time."""

__version__ = "0.1.0"
