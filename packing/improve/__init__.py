"""Stage 4, second looks at a plan: part-empty nodes re-planned, part-filled servers emptied,
and a re-plan against a deployed plan."""
