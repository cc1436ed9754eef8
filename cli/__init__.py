"""The ``pushsvc`` command: one module per noun."""
