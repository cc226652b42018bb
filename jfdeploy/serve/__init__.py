"""``jfdeploy serve``: many clients stream frames to one model over HTTP and WebSockets.

    app.py        the ASGI app (Starlette): routes, API key, body limit, drain, the WebSocket stream
    sessions.py   session options, one VideoPredictor per session, the table (--max-sessions, --session-ttl)
    scheduler.py  the worker thread and the batching window (--max-batch, --max-wait-ms); ``run_batch``
    metrics.py    Prometheus metrics (GET /metrics)
    openapi.py    the schema (GET /openapi.json)
    codec.py      frames, label PNGs and probabilities in and out
    server.py     uvicorn, and the drain on SIGTERM
    index.html    the page (GET /)

Needs the ``serve`` extra: ``pip install 'jfdeploy[serve]'`` (Starlette, uvicorn, prometheus_client).
"""
