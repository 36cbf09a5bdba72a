"""msif beside other influence libraries (``python -m msif.bench.peers``): :mod:`.run` (the problems, the run loop, the CLI),
one adapter per library (:mod:`.captum`, :mod:`.dattri`, :mod:`.pydvl`, :mod:`.kronfluence`, :mod:`.trak`), :mod:`.align`
(scores and damping in msif's convention), :mod:`.common` (names, settings, columns), :mod:`.report` (figure, tables)."""
