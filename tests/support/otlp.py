"""An OTLP/HTTP endpoint on loopback for tests: keeps what the OpenTelemetry exporters send."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on loopback that keeps the export requests it receives."""

    def __init__(self) -> None:
        self.requests: dict[str, list[bytes]] = {}
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.setdefault(self.path, []).append(body)
                receiver.received.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(span name, span attributes, resource attributes) of every span received."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        found = []
        for body in self.requests.get("/v1/traces", []):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = {a.key: _any(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: _any(a.value) for a in span.attributes}
                        found.append((span.name, attrs, resource))
        return found

    def trace_links(self) -> list[tuple[str, str, str]]:
        """(span name, trace id, parent span id) in hex of every span received."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        found = []
        for body in self.requests.get("/v1/traces", []):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        found.append((span.name, span.trace_id.hex(), span.parent_span_id.hex()))
        return found

    def metric_names(self) -> set[str]:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        names = set()
        for body in self.requests.get("/v1/metrics", []):
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    names.update(m.name for m in sm.metrics)
        return names


def _any(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))
