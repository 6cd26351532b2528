"""The web app's backend: a JSON API over one loaded `Captioner`, and the built page at `/`.

`settings` (ServerSettings, with CAPTIONER_* variables) -> `app` (create_app: the `routes`, the
`errors` mapping and upload limit, CORS) -> `server` (serve: bind, then uvicorn). The `batcher`
gathers requests into micro-batches and bounds the queue; `captioning` is the work it runs.
"""
