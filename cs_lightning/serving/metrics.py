"""``GET /metrics``: Prometheus text, one registry per server (``prometheus_client``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: creation times say nothing a scrape needs

LATENCY_BUCKETS = (.005, .01, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Request counts and latencies per endpoint and status, batch sizes per model, the out-of-scope share of intent
    answers, rule violations of replies."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("cs_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("cs_serve_request_duration_seconds", "time from request to the end of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("cs_serve_requests_in_flight", "requests being answered", registry=r)
        self.batch_size = Histogram("cs_serve_batch_size", "items per model call", ["model"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.predictions = Counter("cs_serve_intent_predictions", "intent answers (one per text)", registry=r)
        self.oos = Counter("cs_serve_intent_oos", "intent answers that were out of scope", registry=r)
        self.oos_rate = Gauge("cs_serve_intent_oos_rate", "share of intent answers out of scope since the start",
                              registry=r)
        self.replies = Counter("cs_serve_replies", "replies generated", registry=r)
        self.violating = Counter("cs_serve_replies_with_violations", "replies breaking at least one rule", registry=r)
        self.violations = Counter("cs_serve_rule_violations", "rule violations of replies", ["rule"], registry=r)
        self.ready = Gauge("cs_serve_ready", "1 once every model is loaded", registry=r)
        self._answers = self._out = 0

    def intent_answers(self, answers: list[dict]) -> None:
        out = sum(a["oos"] for a in answers)
        self.predictions.inc(len(answers))
        self.oos.inc(out)
        self._answers += len(answers)
        self._out += out
        self.oos_rate.set(self._out / self._answers)

    def reply(self, violations: list[str]) -> None:
        self.replies.inc()
        if violations:
            self.violating.inc()
        for name in violations:
            self.violations.labels(name).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
