"""The ``alignops`` command line."""
