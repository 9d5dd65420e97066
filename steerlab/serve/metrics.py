"""Counters and histograms rendered in the Prometheus text format at GET /metrics (no dependency), and
the middleware that counts requests."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.n += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}" if labels else f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.n}" if labels else f"{name}_count {self.n}")
        return out


def route_label(path: str) -> str:
    if path.startswith("/v1/vectors/"):
        return "/v1/vectors/{name}/file" if path.endswith("/file") else "/v1/vectors/{name}"
    if path.startswith("/playground"):
        return "/playground"
    known = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/vectors", "/generate", "/")
    return path if path in known else "other"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)  # (route, status) -> n
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.rejected = defaultdict(int)  # reason -> n
        self.batch = _Histogram(BATCH_BUCKETS)
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.ttft = _Histogram(LATENCY_BUCKETS)
        self.steered_rows = 0
        self.gauges = {}  # name -> callable

    def observe_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def observe_batch(self, rows: int) -> None:
        with self._lock:
            self.batch.observe(rows)

    def observe_done(self, prompt_tokens: int, completion_tokens: int, latency_s: float, ttft_s: float | None,
                     steered: bool) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.latency.observe(latency_s)
            if ttft_s is not None:
                self.ttft.observe(ttft_s)
            self.steered_rows += int(steered)

    def observe_cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def observe_reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP steerlab_requests_total HTTP requests by route and status.",
                     "# TYPE steerlab_requests_total counter"]
            lines += [f'steerlab_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            lines += ["# TYPE steerlab_prompt_tokens_total counter", f"steerlab_prompt_tokens_total {self.prompt_tokens}",
                      "# TYPE steerlab_completion_tokens_total counter",
                      f"steerlab_completion_tokens_total {self.completion_tokens}",
                      "# TYPE steerlab_steered_requests_total counter", f"steerlab_steered_requests_total {self.steered_rows}",
                      "# TYPE steerlab_cancelled_total counter", f"steerlab_cancelled_total {self.cancelled}",
                      "# TYPE steerlab_rejected_total counter"]
            lines += [f'steerlab_rejected_total{{reason="{k}"}} {v}' for k, v in sorted(self.rejected.items())]
            lines += ["# HELP steerlab_batch_rows Rows per forward call.", "# TYPE steerlab_batch_rows histogram"]
            lines += self.batch.render("steerlab_batch_rows")
            lines += ["# HELP steerlab_request_seconds Time from submission to the last token.",
                      "# TYPE steerlab_request_seconds histogram"]
            lines += self.latency.render("steerlab_request_seconds")
            lines += ["# HELP steerlab_ttft_seconds Time from submission to the first token.",
                      "# TYPE steerlab_ttft_seconds histogram"]
            lines += self.ttft.render("steerlab_ttft_seconds")
            for name, fn in self.gauges.items():
                lines += [f"# TYPE {name} gauge", f"{name} {fn()}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by route and status (499: the client left before any
    answer), whatever answered it: a route, an error handler or the middleware inside this one."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 0}

        async def tracking_send(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.observe_request(route_label(scope.get("path", "")), status["code"] or 499)
