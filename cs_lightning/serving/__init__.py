"""``cs-serve``: intent and reply exports over HTTP from one process (``POST /v1/intent``,
``POST /v1/chat/completions``, ``GET /health``, ``GET /metrics``, ``GET /v1/models``, ``GET /`` the chat page).

- :mod:`~cs_lightning.serving.metadata`: an export's ``cs_lightning.json`` with defaults (old exports serve too);
- :mod:`~cs_lightning.serving.requests`: body limits, UTF-8, JSON and field checks, errors as one JSON line;
- :mod:`~cs_lightning.serving.batching`: dynamic batching, one inference thread per model;
- :mod:`~cs_lightning.serving.intent` and :mod:`~cs_lightning.serving.chat`: the two models, each in LitServe's
  ``LitAPI`` shape (``setup``, ``decode_request``, ``predict``, ``encode_response``);
- :mod:`~cs_lightning.serving.page`: the chat page (``static/chat.html``, vanilla JS, no build step);
- :mod:`~cs_lightning.serving.metrics`: Prometheus text; :mod:`~cs_lightning.serving.app`: routes and the API-key
  gate; :mod:`~cs_lightning.serving.server`: host/key checks, the socket, uvicorn, SIGTERM.

Why FastAPI + uvicorn and not LitServe. LitServe 0.2.19 was evaluated first, on a two-API server (a batched
``/v1/intent`` LitAPI plus an ``OpenAISpec`` chat LitAPI, ``max_payload_size`` set). What it does well: several
LitAPIs in one server, the OpenAI spec with streaming, dynamic batching, 413 for an oversized body. What decided
against it, all observed on that server:

1. SIGTERM loses requests and leaves processes behind. ``LitServer.run`` installs no SIGTERM handler (only
   ``KeyboardInterrupt`` reaches its graceful shutdown), so SIGTERM kills the main process at once; the
   ``multiprocessing`` Manager that carries the request queues died with it, the request in flight was never
   answered (the client timed out, the worker logged ``BrokenPipeError``), and the two uvicorn API-server processes
   stayed alive as orphans, still holding the port and spinning at ~50% CPU each until killed with SIGKILL. The
   requirement is: finish the requests in flight, then exit 0.
2. Bad requests are 500s. The body is parsed in LitServe's request handler before ``decode_request`` runs, and every
   exception there becomes ``500 {"detail":"Internal server error"}``: invalid JSON, non-UTF-8 bytes, a missing
   field (a ``KeyError`` in ``decode_request``) all answered 500; the OpenAISpec route answers 422 with pydantic's
   multi-entry detail. The requirement is a 4xx JSON error in one line for each class.
3. ``run()`` refuses every host but ``0.0.0.0``, ``127.0.0.1`` and ``::``: one interface of a multi-homed machine
   cannot be chosen.
4. On the 2-core target every request crosses three processes (uvicorn API server, a Manager queue, the inference
   worker, and back), and with two APIs the default start is two API servers, two inference workers, the Manager
   and the main process, six Python processes on two cores; counters for ``/metrics`` would then need Prometheus'
   multi-process mode to add up across them. In one process the event loop hands requests to an inference thread
   per model (PyTorch and ONNX Runtime release the GIL while they compute), and the counters are plain objects.

What is kept from LitServe is its shape: each model is a class with ``setup``, ``decode_request``, ``predict`` (on a
dynamically gathered batch, ``max_batch_size`` / ``batch_timeout``) and ``encode_response``, so moving to LitServe
later, when the points above are fixed there, is a matter of wrapping those classes.
"""
