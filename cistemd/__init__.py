"""cistemd: cisTEM's single-particle cryo-EM pipeline as a persistent daemon.

Layers (arrows point one way, see ``ARCHITECTURE.md``):

* :mod:`cistemd.kernels` -- pure numeric algorithms on numpy arrays;
* :mod:`cistemd.io` -- file formats (MRC, TIFF, STAR, PAR, positions);
* :mod:`cistemd.project` -- the project directory and its SQLite database;
* :mod:`cistemd.manager` / :mod:`cistemd.worker` -- the daemon and its workers.

Importing this package has no side effects and pulls in nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
