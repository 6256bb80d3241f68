"""Stage 5, what a plan tells its reader: the plan file, each pod's load, the plot, the table and
the diff between two plans."""
