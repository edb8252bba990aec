"""`wasmkv serve` as a library: the ASGI application, for any ASGI server.

```python
from wasmkv.serve import create_app

app = create_app("wasmkv.toml")   # every plugin loaded; run it with uvicorn, hypercorn, ...
```

The app serves `POST /v1/plugins/PLUGIN/EXPORT`, `GET /v1/tenants/TENANT`, `/healthz`,
`/readyz` and `/metrics` (see the README's "Run it as a service"). Metrics need
prometheus-client (`pip install 'wasmkv[serve]'`).
"""

from __future__ import annotations

from .host._serve import (
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    MAX_BUFFERED_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ROUTES,
    ServeApp,
    create_app,
)
from .host._serve_metrics import ServeMetrics

__all__ = [
    "BODY_TIMEOUT_S",
    "HEAD_TIMEOUT_S",
    "MAX_BUFFERED_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "ROUTES",
    "ServeApp",
    "ServeMetrics",
    "create_app",
]
