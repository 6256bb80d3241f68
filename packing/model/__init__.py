"""Stage 1, the demand model: what each model needs on each instance type (allocatable resources
and the one pod-capacity rule, SLO tiers, the latency model), classes of alike models, and the
instance types worth keeping."""
