"""The test step: drive model servers from routes.json (seq, rnd, bmk, open, smoke) and report pooled
percentiles, throughput and errors, with the plan's predictions beside the measurements.

May import only `contracts` of ours (ARCHITECTURE.md)."""
