"""`python -m segcentroids.ablate`: the `segcentroids-ablate` command (the SLURM array tasks run it this way)."""

from segcentroids.ablate.cli import main

raise SystemExit(main())
