"""Stage 2, the solve: the configuration LP over server patterns by column generation, its
rounding to whole servers, the bounds that prove how far from optimal a plan can be, the exact
path for small problems, and first-fit decreasing beside them. Candidate plans are compared on
what they cost on nodes, so the solve places them with stage 3's functions."""
