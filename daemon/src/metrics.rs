//! The Prometheus endpoint: `GET /metrics` in the OpenMetrics text format, read from the
//! kernel at scrape time (nothing is sampled between scrapes, so an idle daemon stays idle).

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    conntrack::{Class, Sample, Watcher},
    reservations::{Reservations, Stats},
    server::Listener,
};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: Listener,
    conntrack: Option<Arc<Watcher>>,
    reservations: Arc<Reservations>,
) {
    loop {
        let accepted = match &listener {
            Listener::Tcp(tcp) => tcp.accept().await.map(|(stream, _)| Stream::Tcp(stream)),
            Listener::Unix(unix, _) => unix.accept().await.map(|(stream, _)| Stream::Unix(stream)),
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "metrics: accept failed");
                continue;
            }
        };
        let conntrack = conntrack.clone();
        let reservations = Arc::clone(&reservations);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let conntrack = conntrack.clone();
                let stats = reservations.stats();
                async move { Ok::<_, Infallible>(answer(&request, conntrack, stats).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let served = match stream {
                Stream::Tcp(stream) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Stream::Unix(stream) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%err, "metrics: connection ended with an error");
            }
        });
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn answer(
    request: &Request<Incoming>,
    conntrack: Option<Arc<Watcher>>,
    reservations: Stats,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        );
    }
    let sample = match conntrack {
        Some(watcher) => tokio::task::spawn_blocking(move || watcher.sample(false))
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    match render(sample, reservations) {
        Ok(text) => respond(StatusCode::OK, CONTENT_TYPE, text),
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding the metrics failed\n".into(),
        ),
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The exposition for one sample (or for a node whose conntrack could not be read) and the
/// daemon's runs and reservations.
pub fn render(sample: Option<Sample>, reservations: Stats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ConntrackCollector(sample)));
    registry.register_collector(Box::new(ReservationCollector(reservations)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Runs served and reservations, read at scrape time.
#[derive(Debug)]
struct ReservationCollector(Stats);

impl Collector for ReservationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0;
        let held = ConstGauge::new(i64::try_from(stats.held).unwrap_or(i64::MAX));
        held.encode(encoder.encode_descriptor(
            "sonde_reservations_held",
            "Reservations of this node held now (by any controller).",
            None,
            held.metric_type(),
        )?)?;
        let refusals = ConstCounter::new(stats.refusals);
        refusals.encode(encoder.encode_descriptor(
            "sonde_reservation_refusals",
            "Reservations and runs this daemon refused because the node was held by someone else (or the reservation named was not held).",
            None,
            refusals.metric_type(),
        )?)?;
        let mut served = encoder.encode_descriptor(
            "sonde_runs_served",
            "Run sides this daemon admitted since it started.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (side, count) in [
            ("server", stats.servers_served),
            ("client", stats.clients_served),
        ] {
            let counter = ConstCounter::new(count);
            counter.encode(served.encode_family(&[("side", side)])?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ConntrackCollector(Option<Sample>);

impl Collector for ConntrackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let up = ConstGauge::new(i64::from(self.0.is_some()));
        up.encode(encoder.encode_descriptor(
            "sonde_conntrack_up",
            "Whether sonded could read this node's conntrack table through ctnetlink.",
            None,
            up.metric_type(),
        )?)?;
        let Some(sample) = &self.0 else {
            return Ok(());
        };
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        gauge(
            &mut encoder,
            "sonde_conntrack_entries",
            "Entries in this node's conntrack table (its network namespace).",
            sample.size.entries,
        )?;
        gauge(
            &mut encoder,
            "sonde_conntrack_max_entries",
            "The limit entries are checked against (nf_conntrack_max).",
            sample.size.max,
        )?;
        let counters = &sample.counters;
        let kernel: [(&str, &str, u64); 8] = [
            (
                "sonde_conntrack_insert_failed",
                "Inserts that failed (clashes), summed over CPUs.",
                counters.insert_failed,
            ),
            (
                "sonde_conntrack_dropped_packets",
                "Packets dropped because no entry could be made (table full).",
                counters.drop,
            ),
            (
                "sonde_conntrack_early_drops",
                "Unassured entries evicted to make room for new ones.",
                counters.early_drop,
            ),
            (
                "sonde_conntrack_invalid_packets",
                "Packets conntrack could not track.",
                counters.invalid,
            ),
            (
                "sonde_conntrack_found",
                "Lookups that found an entry.",
                counters.found,
            ),
            (
                "sonde_conntrack_search_restarts",
                "Lookups restarted because the hash table changed.",
                counters.search_restart,
            ),
            (
                "sonde_conntrack_clash_resolves",
                "Insert clashes the kernel resolved.",
                counters.clash_resolve,
            ),
            (
                "sonde_conntrack_chain_too_long",
                "Inserts refused because a hash chain was too long.",
                counters.chain_toolong,
            ),
        ];
        for (name, help, value) in kernel {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        if let Some(events) = &sample.events {
            let mut family = encoder.encode_descriptor(
                "sonde_conntrack_created_entries",
                "New entries seen in ctnetlink events since sonded started, by protocol.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for class in Class::ALL {
                let labels = [("protocol", class.name())];
                ConstCounter::new(events.created[class as usize])
                    .encode(family.encode_family(&labels)?)?;
            }
            let destroyed = ConstCounter::new(events.destroyed);
            destroyed.encode(encoder.encode_descriptor(
                "sonde_conntrack_destroyed_entries",
                "Entries removed (timed out, closed, evicted) since sonded started.",
                None,
                destroyed.metric_type(),
            )?)?;
            let overflows = ConstCounter::new(events.overflows);
            overflows.encode(encoder.encode_descriptor(
                "sonde_conntrack_event_overflows",
                "Times ctnetlink events were lost (receive buffer full): created/destroyed are low.",
                None,
                overflows.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
