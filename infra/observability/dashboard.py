#!/usr/bin/env python3
"""Writes tandem-dashboard.json, the Grafana dashboard of Tandem, next to this file.

The JSON is generated so that its panels stay uniform; edit this file, run it, commit both.
`make test-infra` checks that the committed JSON is what this file writes, that every query
parses as PromQL and that every metric it names is one the code exports.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": len(panels) + 1, "panels": []})
    y += 1


def ts(title, targets, unit, x, w=8, h=8, description=""):
    panels.append({
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "id": len(panels) + 1, "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    })


def stat(title, expr, unit, x, w=4, description=""):
    panels.append({
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "id": len(panels) + 1, "gridPos": {"h": 4, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "targets": [{"datasource": DS, "expr": expr, "refId": "A"}],
    })


def q(p, metric, by):
    return (f"histogram_quantile({p}, sum by (le, {by}) "
            f"(rate({metric}_bucket[$__rate_interval])))")


row("Overview")
stat("Snapshot age", "max(tandem_serving_snapshot_age_seconds)", "s", 0,
     description="Now minus the served snapshot's cutoff (nightly batch: under ~26 h).")
stat("Since the last successful batch",
     "time() - max(tandem_batch_last_success_timestamp_seconds)", "s", 4)
stat("Since the last failed batch",
     "time() - max(tandem_batch_last_failure_timestamp_seconds)", "s", 8,
     description="No value: no run has failed since the online store was created.")
stat("Freshness lag (events)", "sum(tandem_serving_freshness_lag_events)", "short", 12,
     description="Events on the bus not yet applied by the speed layer, as serve sees it.")
stat("Events applied/s",
     "sum(rate(tandem_stream_events_total{outcome=\"applied\"}[$__rate_interval]))", "ops", 16)
stat("API p99", "histogram_quantile(0.99, sum by (le) "
     "(rate(tandem_http_request_duration_seconds_bucket{route=~\"/v1/.*\"}[$__rate_interval])))",
     "s", 20)
y += 4

row("API (tandem serve)")
ts("Requests by route", [("sum by (route, status) (rate(tandem_http_requests_total[$__rate_interval]))",
                          "{{route}} {{status}}")], "reqps", 0)
ts("Latency by route", [(q(0.5, "tandem_http_request_duration_seconds", "route"), "p50 {{route}}"),
                        (q(0.99, "tandem_http_request_duration_seconds", "route"), "p99 {{route}}")],
   "s", 8)
ts("Events in", [("sum(rate(tandem_serving_events_accepted_total[$__rate_interval]))", "accepted"),
                 ("sum(rate(tandem_serving_events_rejected_total[$__rate_interval]))", "rejected"),
                 ("sum(rate(tandem_serving_erasures_total[$__rate_interval]))", "erasures")],
   "ops", 16)
y += 8
ts("Online store latency by call", [(q(0.99, "tandem_serving_store_seconds", "op"), "p99 {{op}}")],
   "s", 0, w=12)
ts("Online store errors and timeouts",
   [("sum by (op) (rate(tandem_serving_store_errors_total[$__rate_interval]))", "{{op}}")],
   "ops", 12, w=12, description="Each one is a degraded answer (snapshot-only or popular).")
y += 8

row("Speed layer and archiver")
ts("Speed layer events by outcome",
   [("sum by (outcome) (rate(tandem_stream_events_total[$__rate_interval]))", "{{outcome}}")],
   "ops", 0)
ts("Consumer lag", [("max by (layer, partition) (tandem_stream_lag_records)",
                     "{{layer}} p{{partition}}")], "short", 8)
ts("Batch apply latency", [(q(0.5, "tandem_stream_batch_apply_seconds", "instance"), "p50 {{instance}}"),
                           (q(0.99, "tandem_stream_batch_apply_seconds", "instance"), "p99 {{instance}}")],
   "s", 16, description="One pipelined apply of up to stream.batch events to the online store.")
y += 8
ts("Archived", [("sum(rate(tandem_archive_events_total[$__rate_interval]))", "events"),
                ("sum(rate(tandem_archive_invalid_records_total[$__rate_interval]))", "invalid records")],
   "ops", 0)
ts("Archive files", [("sum(rate(tandem_archive_files_total[$__rate_interval])) * 3600", "files/h")],
   "short", 8)
ts("Archive watermark age", [("time() - tandem_archive_watermark_seconds", "p{{partition}}")], "s", 16,
   description="The batch cutoff cannot pass the oldest partition's watermark.")
y += 8
ts("Fluvio streams read again",
   [("sum by (reason) (rate(tandem_bus_fluvio_rereads_total[$__rate_interval]))", "{{reason}}")],
   "ops", 0, w=12,
   description="A consumer stream thrown away and its partition read again from the first record "
               "not handed out: gap (an answer cut mid-batch, a few per 8 MiB read while catching "
               "up), error (a broker restart), stalled, repeat (a record dropped as seen).")
y += 8

dashboard = {
    "title": "Tandem",
    "uid": "tandem-overview",
    "tags": ["tandem"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                             "label": "Prometheus"}]},
    "panels": panels,
}
out = pathlib.Path(__file__).with_name("tandem-dashboard.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
