"""The model server (ARCHITECTURE.md, "Pod contract" and "Serving API"): one process per pod holds each
assigned model once, batches requests per model, and answers the reference design's /predictions API and
the KServe v2 / Open Inference Protocol from one data plane.

    config.py      Settings from the command line or the pod contract's environment
    repository.py  the assigned models' records and states (loading, ready, failed and why)
    loader.py      start-up: read entries, the memory budget, fetch and sha256-verify bundles, backoff, load
    model.py       one loaded artifact: its forward (trimmed or padded), per-task post-processing
    text.py        the bundle's own tokenizer (tokenizers only, no transformers)
    batcher.py     per-model dynamic batching on a bounded pool of inference threads
    dataplane.py   the one data plane both protocols call: metadata, readiness, input rules, inference
    v1.py, v2.py   the two HTTP protocols: decode a request, call the data plane, encode its answer
    body.py        raw request bodies within MAX_BODY_BYTES; request deadlines
    errors.py      the errors a request can meet, each with its HTTP status
    metrics.py     Prometheus metrics on the server's own registry
    app.py         create_app(settings): the FastAPI app, probes, JSON errors, drain bookkeeping
    server.py      serve(settings): uvicorn, draining on SIGTERM
    cli.py         `python -m serving [serve|build]`
    build.py, docker/  the images (the build step)

Kept to Python 3.10 syntax and APIs: it runs in the Neuron images (checked with vermin).
"""
