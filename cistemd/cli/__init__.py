"""Command-line entry points: ``cistem`` (headless CLI) and ``cistemd`` (the daemon).

Each ``cistem`` sub-command is one module in :mod:`cistemd.cli.commands` with
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Command
modules import nothing heavy at module level, so ``cistem --help`` stays fast.
"""
