//! `refit serve`'s Prometheus metrics, at `GET /metrics`:
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `refit_serve_requests_total` | `route`, `status` | requests answered |
//! | `refit_serve_request_seconds` | `route`, `status` | time from the request's head to its answer |
//! | `refit_serve_inference_seconds` | `model` | one text's featurizing, ONNX Runtime run and decoding, on a predictor |
//! | `refit_serve_predictor_wait_seconds` | `model` | time a request waited for a free predictor |
//! | `refit_serve_model_info` | `model`, `version`, `ref` | 1 for each version being served |
//! | `refit_serve_swaps_total` | `model`, `result` | alias moves followed: `ok`, or `failed` (the old version kept serving) |
//! | `refit_serve_predictors` | `model` | predictors (ONNX Runtime sessions) in the model's pool |
//!
//! `route` is the route's pattern (`/models/{name}/model/parse`), or `unmatched`, so that
//! scanning clients cannot grow the label set.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: parses take well under a millisecond to tens of milliseconds.
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The server's metrics.
pub(crate) struct ServeMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub inference_seconds: HistogramVec,
    pub wait_seconds: HistogramVec,
    pub model_info: IntGaugeVec,
    pub swaps: IntCounterVec,
    pub predictors: IntGaugeVec,
}

impl ServeMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )
            .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        Self {
            requests: counter(
                "refit_serve_requests_total",
                "HTTP requests answered, by route and status.",
                &["route", "status"],
            ),
            request_seconds: histogram(
                "refit_serve_request_seconds",
                "Time to answer an HTTP request, by route and status.",
                &["route", "status"],
            ),
            inference_seconds: histogram(
                "refit_serve_inference_seconds",
                "Time to parse one text on a predictor: featurize, ONNX Runtime, decode.",
                &["model"],
            ),
            wait_seconds: histogram(
                "refit_serve_predictor_wait_seconds",
                "Time a parse request waited for a free predictor.",
                &["model"],
            ),
            model_info: gauge(
                "refit_serve_model_info",
                "1 for each model version being served, with the reference it was asked for.",
                &["model", "version", "ref"],
            ),
            swaps: counter(
                "refit_serve_swaps_total",
                "Alias moves followed, by result (ok, failed: the old version kept serving).",
                &["model", "result"],
            ),
            predictors: gauge(
                "refit_serve_predictors",
                "Predictors (ONNX Runtime sessions) in each model's pool.",
                &["model"],
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
