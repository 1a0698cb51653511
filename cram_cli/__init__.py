"""The ``cram`` command-line interface (Click). Each command lives in its own module."""
