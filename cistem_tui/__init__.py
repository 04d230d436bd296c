"""cistem-tui: the Textual terminal UI, a client of the cistemd daemon.

It never opens the project database or imports kernels; it talks to cistemd
only (see :mod:`cistem_tui.app` and :mod:`cistem_tui.connection`).
"""
