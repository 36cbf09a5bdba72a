"""``python -m msif.bench.peers``: the peers benchmark's command line (:mod:`msif.bench.peers.run`)."""

from msif.bench.peers.run import main

main()
