"""/metrics in Prometheus' text format: queue, running requests, tokens/s, time to first
token, KV-cache use, prefix-cache hits, adapter loads."""

from __future__ import annotations

import statistics
import time
from collections import deque

from lmforge.serve.engine import Engine


class Throughput:
    """Generated tokens per second over the last `window` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def rate(self, total: int) -> float:
        now = time.monotonic()
        self.samples.append((now, total))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def render(engine: Engine, throughput: Throughput, in_flight: int, rejected: int) -> str:
    s, blocks = engine.stats, engine.blocks
    ttft = list(s.ttft_seconds or [])
    metrics = [
        ("queue_length", "gauge", "requests waiting for the engine", len(engine.waiting)),
        ("running_requests", "gauge", "sequences in the running batch", len(engine.running)),
        ("in_flight_requests", "gauge", "HTTP generation requests being answered", in_flight),
        ("rejected_requests_total", "counter", "requests refused with 429", rejected),
        ("requests_total", "counter", "engine requests finished", s.requests),
        ("prompt_tokens_total", "counter", "prompt tokens read", s.prompt_tokens),
        ("generated_tokens_total", "counter", "tokens generated", s.generated_tokens),
        (
            "tokens_per_second",
            "gauge",
            "tokens generated per second (last 10 s)",
            throughput.rate(s.generated_tokens),
        ),
        (
            "time_to_first_token_seconds_p50",
            "gauge",
            "median time to first token",
            _quantile(ttft, 0.5),
        ),
        (
            "time_to_first_token_seconds_p99",
            "gauge",
            "99th percentile time to first token",
            _quantile(ttft, 0.99),
        ),
        (
            "kv_cache_usage_ratio",
            "gauge",
            "share of KV-cache blocks held",
            blocks.used() / blocks.num_blocks,
        ),
        (
            "prefix_cache_hit_tokens_total",
            "counter",
            "prompt tokens read from the prefix cache",
            blocks.stats.hit_tokens,
        ),
        (
            "prefix_cache_queried_tokens_total",
            "counter",
            "prompt tokens looked up",
            blocks.stats.queried_tokens,
        ),
        ("preemptions_total", "counter", "sequences preempted for memory", s.preemptions),
        (
            "adapter_loads_total",
            "counter",
            "LoRA adapters read into a slot",
            engine.adapters.loads if engine.adapters is not None else 0,
        ),
    ]
    lines = []
    for name, kind, help_text, value in metrics:
        lines += [f"# HELP lmforge_{name} {help_text}", f"# TYPE lmforge_{name} {kind}"]
        lines.append(f"lmforge_{name} {float(value):.6g}")
    return "\n".join(lines) + "\n"
