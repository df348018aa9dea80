//! The monitor's `/metrics`: per-pair latest figures with bounded cardinality (only the pairs
//! of the last round: n·K series per metric, never n²), histograms by placement, path and
//! kind, and the monitor's own rounds, coverage, failures and waits. Names follow
//! Prometheus' conventions: base units, `_seconds`, `_bytes`, `_total`.

use std::{convert::Infallible, sync::Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::scenario::execute::{Record, RunSet, Status};

/// A pair's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    /// The client's node.
    pub source: String,
    /// The server's node.
    pub target: String,
    /// same-node, cross-node or cross-zone.
    pub placement: String,
    /// pod-ip, service, host.
    pub path: String,
    /// The generator.
    pub kind: String,
}

/// A kernel stage's labels: the pair's, and which stage of which direction.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The client's node.
    pub source: String,
    /// The server's node.
    pub target: String,
    /// same-node, cross-node or cross-zone.
    pub placement: String,
    /// pod-ip, service, host.
    pub path: String,
    /// The generator.
    pub kind: String,
    /// client-to-server or server-to-client.
    pub direction: String,
    /// sender stack, sender node, wire, receiver node, receiver stack, node.
    pub stage: String,
}

/// Labels of the aggregated series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// Placement class.
    pub placement: String,
    /// Path.
    pub path: String,
    /// Generator.
    pub kind: String,
}

/// A measurement's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// complete, failed, not-run.
    pub status: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Everything the monitor exposes.
#[derive(Debug)]
pub struct MonitorMetrics {
    registry: Registry,
    p50: Family<PairLabels, FloatGauge>,
    p99: Family<PairLabels, FloatGauge>,
    throughput: Family<PairLabels, FloatGauge>,
    loss: Family<PairLabels, FloatGauge>,
    stage_p50: Family<StageLabels, FloatGauge>,
    latency: Family<ClassLabels, Histogram>,
    measurements: Family<StatusLabels, Counter>,
    rounds: Counter,
    round_seconds: FloatGauge,
    waits: Counter,
    waited_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    coverage: Gauge,
    pairs_total: Gauge,
    leader: Gauge,
    /// The last rotation's measured pairs, for coverage.
    recent: Mutex<std::collections::VecDeque<Vec<(String, String)>>>,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~5 s: a pair's median from a warm rr to a broken path's timeouts.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        10e-6, 2.0, 20,
    ))
}

impl MonitorMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sonde_monitor");
        let p50 = Family::<PairLabels, FloatGauge>::default();
        let p99 = Family::<PairLabels, FloatGauge>::default();
        let throughput = Family::<PairLabels, FloatGauge>::default();
        let loss = Family::<PairLabels, FloatGauge>::default();
        let stage_p50 = Family::<StageLabels, FloatGauge>::default();
        let latency = Family::<ClassLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let measurements = Family::<StatusLabels, Counter>::default();
        let rounds = Counter::default();
        let round_seconds = FloatGauge::default();
        let waits = Counter::default();
        let waited_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let coverage = Gauge::default();
        let pairs_total = Gauge::default();
        let leader = Gauge::default();
        registry.register(
            "pair_latency_p50_seconds",
            "Median latency of the pair's last measurement (pairs of the last round only).",
            p50.clone(),
        );
        registry.register(
            "pair_latency_p99_seconds",
            "99th percentile latency of the pair's last measurement.",
            p99.clone(),
        );
        registry.register(
            "pair_throughput_bytes_per_second",
            "Goodput of the pair's last measurement (stream kinds).",
            throughput.clone(),
        );
        registry.register(
            "pair_loss_ratio",
            "Datagrams lost of those sent in the pair's last measurement (UDP kinds).",
            loss.clone(),
        );
        registry.register(
            "pair_stage_latency_p50_seconds",
            "Median time the pair's packets spent in a kernel stage in its last traced measurement (a few stages a direction, pairs of the last round only).",
            stage_p50.clone(),
        );
        registry.register(
            "latency_seconds",
            "Pairs' median latencies, by placement class, path and kind.",
            latency.clone(),
        );
        registry.register(
            "measurements",
            "Measurements by outcome.",
            measurements.clone(),
        );
        registry.register("rounds", "Rounds run.", rounds.clone());
        registry.register(
            "round_duration_seconds",
            "How long the last round took.",
            round_seconds.clone(),
        );
        registry.register(
            "waits",
            "Measurements that waited for nodes another controller held.",
            waits.clone(),
        );
        registry.register(
            "waited_seconds",
            "Time measurements spent waiting for nodes another controller held.",
            waited_seconds.clone(),
        );
        registry.register(
            "coverage_pairs",
            "Ordered pairs measured completely in the last full rotation.",
            coverage.clone(),
        );
        registry.register(
            "pairs",
            "Ordered pairs of the monitored nodes: n(n-1).",
            pairs_total.clone(),
        );
        registry.register(
            "leader",
            "1 when this monitor measures (it holds the Lease, or has none), 0 while it stands by.",
            leader.clone(),
        );
        Self {
            registry,
            p50,
            p99,
            throughput,
            loss,
            stage_p50,
            latency,
            measurements,
            rounds,
            round_seconds,
            waits,
            waited_seconds,
            coverage,
            pairs_total,
            leader,
            recent: Mutex::default(),
        }
    }

    /// Whether this monitor measures or stands by.
    pub fn set_leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
    }

    /// Takes in one round's run-set: the per-pair series become this round's pairs.
    pub fn round(&self, set: &RunSet, rotation: usize, nodes: usize) {
        for family in [&self.p50, &self.p99, &self.throughput, &self.loss] {
            family.clear();
        }
        self.stage_p50.clear();
        let mut measured = Vec::new();
        for record in &set.measurements {
            self.measurement(record);
            if record.status == Status::Complete {
                measured.push((record.from_node.clone(), record.to_node.clone()));
            }
        }
        self.rounds.inc();
        self.round_seconds
            .set(crate::scenario::execute::wall(set).as_secs_f64());
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.push_back(measured);
        while recent.len() > rotation.max(1) {
            recent.pop_front();
        }
        let covered: std::collections::HashSet<&(String, String)> =
            recent.iter().flatten().collect();
        self.coverage.set(covered.len() as i64);
        self.pairs_total
            .set((nodes * nodes.saturating_sub(1)) as i64);
    }

    fn measurement(&self, record: &Record) {
        let status = match record.status {
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::NotRun => "not-run",
        };
        self.measurements
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .inc();
        if !record.waits.is_empty() {
            self.waits.inc();
            self.waited_seconds.inc_by(record.waited_seconds);
        }
        let placement = record.placement.name().to_owned();
        let labels = PairLabels {
            source: record.from_node.clone(),
            target: record.to_node.clone(),
            placement: placement.clone(),
            path: record.path.name().to_owned(),
            kind: record.kind.clone(),
        };
        let Some(headline) = record
            .headline
            .filter(|_| record.status == Status::Complete)
        else {
            return;
        };
        if let Some(p50) = headline.p50_ns {
            let seconds = p50 as f64 / 1e9;
            self.p50.get_or_create(&labels).set(seconds);
            self.latency
                .get_or_create(&ClassLabels {
                    placement,
                    path: labels.path.clone(),
                    kind: labels.kind.clone(),
                })
                .observe(seconds);
        }
        if let Some(p99) = headline.p99_ns {
            self.p99.get_or_create(&labels).set(p99 as f64 / 1e9);
        }
        let rules = sonde_proto::kinds::KindRules::by_name(&record.kind);
        if rules.is_some_and(|rules| !rules.is_request_response())
            && let Some(bits) = headline.bits_per_second
        {
            self.throughput.get_or_create(&labels).set(bits / 8.0);
        }
        if rules.is_some_and(|rules| rules.transport == sonde_proto::kinds::Transport::Udp)
            && let Some(loss) = udp_loss(record)
        {
            self.loss.get_or_create(&labels).set(loss);
        }
        for (direction, stage, p50_ns) in stage_medians(record) {
            self.stage_p50
                .get_or_create(&StageLabels {
                    source: labels.source.clone(),
                    target: labels.target.clone(),
                    placement: labels.placement.clone(),
                    path: labels.path.clone(),
                    kind: labels.kind.clone(),
                    direction,
                    stage,
                })
                .set(p50_ns as f64 / 1e9);
        }
    }

    /// The exposition, OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for MonitorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The loss ratio of the first run result's UDP figures.
fn udp_loss(record: &Record) -> Option<f64> {
    record
        .results
        .first()?
        .pointer("/measurements/0/udp/loss_ratio")?
        .as_f64()
}

/// The kernel stages' medians of the first run result's first traced measurement:
/// (direction, stage, p50 in ns).
fn stage_medians(record: &Record) -> Vec<(String, String, i64)> {
    let Some(directions) = record.results.first().and_then(|result| {
        result
            .pointer("/measurements")?
            .as_array()?
            .iter()
            .find_map(|m| m.pointer("/kernel/directions")?.as_array())
    }) else {
        return Vec::new();
    };
    directions
        .iter()
        .flat_map(|direction| {
            let name = direction["direction"].as_str().unwrap_or_default();
            direction["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |stage| {
                    Some((
                        name.to_owned(),
                        stage["name"].as_str()?.to_owned(),
                        stage.pointer("/latency/p50_ns")?.as_i64()?,
                    ))
                })
        })
        .collect()
}

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<MonitorMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = std::sync::Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &MonitorMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".to_owned(),
        )
    } else {
        match metrics.render() {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding the metrics failed\n".to_owned(),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
