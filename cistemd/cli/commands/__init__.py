"""One module per ``cistem`` sub-command (see :mod:`cistemd.cli`)."""
