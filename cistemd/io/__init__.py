"""File formats: reading and writing everything cisTEM reads and writes.

Submodules (import the one you need; importing this package is cheap and pulls
in none of mrcfile, tifffile or pandas):

* :mod:`cistemd.io.mrc` -- MRC images, stacks and volumes (modes 0, 1, 2, 4, 6, 12);
* :mod:`cistemd.io.tiff` -- multi-page TIFF movies (SerialEM's LZW included);
* :mod:`cistemd.io.movie` -- streaming movie frames from MRC or TIFF with gain
  and dark correction (:func:`~cistemd.io.movie.open_movie`);
* :mod:`cistemd.io.cistem_star` -- cisTEM ``.star`` particle parameters;
* :mod:`cistemd.io.par` -- Frealign ``.par`` files (16 and 17 columns);
* :mod:`cistemd.io.relion_star` -- RELION 3.0/3.1 particle ``.star`` import/export;
* :mod:`cistemd.io.positions` -- particle-position text files (asset ID or file, x, y in Å);
* :mod:`cistemd.io.info` -- ``cistem info``: describe any of the above;
* :mod:`cistemd.io.parameters` -- the shared per-particle table.

Every reader raises :class:`~cistemd.errors.InvalidInputError` -- and only that
-- for bad input, with a message that names the file and what is wrong.
"""

from cistemd.errors import InvalidInputError

__all__ = ["InvalidInputError"]
