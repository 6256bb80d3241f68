"""Deploy runtimes for a plan's servers: `local` (processes on this machine, the default), `docker` and
`kubernetes` (ARCHITECTURE.md). May import contracts, charts and store of ours."""
