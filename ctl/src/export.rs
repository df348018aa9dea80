//! Sending results where dashboards read them: a Prometheus Pushgateway (one group per
//! scenario, or per scenario and run ID; replaced by a rerun: the gateway never expires
//! groups) and Graphite's plaintext
//! protocol (`sonde.<scenario>.<source>.<target>.<metric> <value> <unix time>`).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use crate::{
    error::{Context as _, refuse},
    run::report::RunReport,
    scenario::execute::{Headline, RunSet, Status},
};

/// Where results go besides the output, for `run` and `scenario run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExportArgs {
    /// Push the results to this Prometheus Pushgateway (http://HOST:PORT), as the group
    /// job=sonde, scenario=NAME (`run` for `sondectl run`): a rerun replaces it.
    #[arg(long)]
    pub push_gateway: Option<String>,

    /// Add run_id=ID to the Pushgateway group's key: one group per run of a scenario (a CI
    /// job's ID, say); pushing the same ID again replaces that group.
    #[arg(long, requires = "push_gateway", value_parser = parse_run_id)]
    pub push_run_id: Option<String>,

    /// Remove the group from the Pushgateway instead of measuring (it never expires groups).
    #[arg(long, requires = "push_gateway")]
    pub push_delete: bool,

    /// Send the results to Graphite's plaintext port (HOST:PORT, usually 2003).
    #[arg(long)]
    pub graphite: Option<String>,
}

/// One figure of one measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The client's node.
    pub source: String,
    /// The server's node.
    pub target: String,
    /// The generator.
    pub kind: String,
    /// The path.
    pub path: String,
    /// Its metric name, without prefix, in base units (`latency_p50_seconds`).
    pub metric: &'static str,
    /// The value.
    pub value: f64,
}

fn figures(source: &str, target: &str, kind: &str, path: &str, headline: &Headline) -> Vec<Figure> {
    let figure = |metric, value: Option<f64>| {
        value.map(|value| Figure {
            source: source.to_owned(),
            target: target.to_owned(),
            kind: kind.to_owned(),
            path: path.to_owned(),
            metric,
            value,
        })
    };
    [
        figure(
            "latency_p50_seconds",
            headline.p50_ns.map(|ns| ns as f64 / 1e9),
        ),
        figure(
            "latency_p99_seconds",
            headline.p99_ns.map(|ns| ns as f64 / 1e9),
        ),
        figure(
            "throughput_bytes_per_second",
            headline
                .bits_per_second
                .filter(|_| {
                    sonde_proto::kinds::KindRules::by_name(kind)
                        .is_some_and(|rules| !rules.is_request_response())
                })
                .map(|bits| bits / 8.0),
        ),
        figure("messages_per_second", headline.messages_per_second),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The figures of every complete measurement of a run-set.
pub fn of_set(set: &RunSet) -> Vec<Figure> {
    set.measurements
        .iter()
        .filter(|m| m.status == Status::Complete)
        .filter_map(|m| {
            let headline = m.headline?;
            Some(figures(
                &m.from_node,
                &m.to_node,
                &m.kind,
                m.path.name(),
                &headline,
            ))
        })
        .flatten()
        .collect()
}

/// The figures of a run (medians over its measurements).
pub fn of_report(report: &RunReport) -> Vec<Figure> {
    let node = |end: &crate::run::report::EndReport| {
        end.places
            .first()
            .and_then(|place| place.node.clone())
            .unwrap_or_else(|| end.endpoint.clone())
    };
    let headline = crate::scenario::execute::headline_of(report);
    let path = serde_json::to_value(report.path)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    figures(
        &node(&report.from),
        &node(&report.to),
        &report.kind,
        &path,
        &headline,
    )
}

/// A label value in the text exposition format.
fn quoted(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures in Prometheus' text exposition format (0.0.4, which every Pushgateway reads).
pub fn exposition(figures: &[Figure]) -> String {
    let mut text = String::new();
    let mut names: Vec<&str> = figures.iter().map(|f| f.metric).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        text.push_str(&format!("# TYPE sonde_{name} gauge\n"));
        for f in figures.iter().filter(|f| f.metric == name) {
            text.push_str(&format!(
                "sonde_{name}{{source=\"{}\",target=\"{}\",kind=\"{}\",path=\"{}\"}} {}\n",
                quoted(&f.source),
                quoted(&f.target),
                quoted(&f.kind),
                quoted(&f.path),
                f.value
            ));
        }
    }
    text
}

/// A run ID as a Pushgateway grouping key's value takes it in a URL path.
fn parse_run_id(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 128
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{text:?}: a run ID is 1 to 128 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(text.to_owned())
}

/// A Pushgateway group's key besides job=sonde.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// The scenario's name (`run` for `sondectl run`).
    pub scenario: &'a str,
    /// `--push-run-id`.
    pub run_id: Option<&'a str>,
}

impl<'a> Group<'a> {
    /// The group of `scenario` with the run ID of `args`.
    pub fn of(scenario: &'a str, args: &'a ExportArgs) -> Self {
        Self {
            scenario,
            run_id: args.push_run_id.as_deref(),
        }
    }

    /// The group's URL path. The scenario's name is base64url-encoded (the gateway's
    /// `@base64` form): any name is a valid path segment.
    fn path(&self) -> String {
        use base64::Engine as _;
        let scenario = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.scenario);
        let mut path = format!("/metrics/job/sonde/scenario@base64/{scenario}");
        if let Some(id) = self.run_id {
            path.push_str("/run_id/");
            path.push_str(id);
        }
        path
    }
}

/// Sends one HTTP/1.1 request to `base` (http://HOST:PORT) and fails on a non-2xx answer.
async fn request(base: &str, method: &str, path: &str, body: String) -> crate::Result<()> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("--push-gateway {base:?}: only http://HOST:PORT"))?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to the Pushgateway at {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the Pushgateway")?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending to the Pushgateway")?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        refuse!("the Pushgateway answered {status}: {}", body.trim());
    }
    Ok(())
}

/// Replaces the group `group` on the Pushgateway at `base` with `figures` (PUT).
pub async fn push(base: &str, group: Group<'_>, figures: &[Figure]) -> crate::Result<()> {
    request(base, "PUT", &group.path(), exposition(figures)).await
}

/// Deletes the group `group` from the Pushgateway at `base`.
pub async fn push_delete(base: &str, group: Group<'_>) -> crate::Result<()> {
    request(base, "DELETE", &group.path(), String::new()).await
}

/// A Graphite path component: dots and spaces would split or break the path.
fn graphite_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The figures as Graphite plaintext lines, stamped `at` (unix seconds).
pub fn graphite_lines(prefix: &str, figures: &[Figure], at: u64) -> String {
    figures
        .iter()
        .map(|f| {
            format!(
                "sonde.{}.{}.{}.{}.{}.{} {} {at}\n",
                graphite_part(prefix),
                graphite_part(&f.source),
                graphite_part(&f.target),
                graphite_part(&f.kind),
                graphite_part(&f.path),
                f.metric,
                f.value
            )
        })
        .collect()
}

/// Sends the figures to Graphite's plaintext port at `addr` (HOST:PORT).
pub async fn graphite(addr: &str, prefix: &str, figures: &[Figure]) -> crate::Result<()> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to Graphite at {addr}"))?;
    stream
        .write_all(graphite_lines(prefix, figures, at).as_bytes())
        .await
        .context("sending to Graphite")?;
    stream
        .shutdown()
        .await
        .context("closing the Graphite connection")?;
    Ok(())
}

/// Sends `figures` wherever `args` says; `scenario` names them.
pub async fn send(args: &ExportArgs, scenario: &str, figures: &[Figure]) -> crate::Result<()> {
    if let Some(gateway) = &args.push_gateway {
        push(gateway, Group::of(scenario, args), figures).await?;
    }
    if let Some(addr) = &args.graphite {
        graphite(addr, scenario, figures).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(metric: &'static str, value: f64) -> Figure {
        Figure {
            source: "node1".into(),
            target: "node.2".into(),
            kind: "tcp-rr".into(),
            path: "pod-ip".into(),
            metric,
            value,
        }
    }

    #[test]
    fn the_exposition_has_one_type_line_per_metric() {
        let text = exposition(&[
            figure("latency_p50_seconds", 4.5e-5),
            figure("latency_p99_seconds", 1e-4),
        ]);
        assert_eq!(text.matches("# TYPE").count(), 2);
        assert!(text.contains(
            "sonde_latency_p50_seconds{source=\"node1\",target=\"node.2\",kind=\"tcp-rr\",path=\"pod-ip\"} 0.000045"
        ));
    }

    #[test]
    fn a_group_path_holds_any_scenario_name_and_the_run_id() {
        let args = ExportArgs {
            push_run_id: Some("ci-481".into()),
            ..ExportArgs::default()
        };
        assert_eq!(
            Group::of("mesh/rr", &args).path(),
            "/metrics/job/sonde/scenario@base64/bWVzaC9ycg/run_id/ci-481"
        );
        assert_eq!(
            Group::of("run", &ExportArgs::default()).path(),
            "/metrics/job/sonde/scenario@base64/cnVu"
        );
        assert!(parse_run_id("a/b").is_err());
        assert!(parse_run_id("").is_err());
    }

    #[test]
    fn graphite_paths_have_no_stray_dots() {
        let lines = graphite_lines("mesh rr", &[figure("latency_p50_seconds", 2.0)], 1700);
        assert_eq!(
            lines,
            "sonde.mesh_rr.node1.node_2.tcp-rr.pod-ip.latency_p50_seconds 2 1700\n"
        );
    }
}
