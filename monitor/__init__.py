"""The monitor process: reconciliation, canaries and alerts (``pushsvc monitor``)."""
