//! The report as CSV: one row per measurement.

use super::model::*;

/// CSV: a header and one row per measurement, raw numbers in the JSON's units.
pub fn csv(report: &RunReport) -> crate::Result<String> {
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "kind",
        "from",
        "to",
        "path",
        "size_bytes",
        "response_size_bytes",
        "repetition",
        "throughput_bits_per_second",
        "messages_per_second",
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
        "udp_sent",
        "udp_received",
        "udp_lost",
        "udp_jitter_ns",
        "tcp_retransmits",
        "tcp_rtt_us",
        "client_cpu_seconds",
        "server_cpu_seconds",
        "complete",
        "errors",
    ])?;
    let path = serde_json::to_value(report.path)?;
    for m in &report.measurements {
        let latency = |pick: fn(&Latency) -> u64| {
            m.latency
                .as_ref()
                .map(|l| pick(l).to_string())
                .unwrap_or_default()
        };
        let udp = |pick: fn(&UdpReport) -> u64| {
            m.udp
                .as_ref()
                .map(|u| pick(u).to_string())
                .unwrap_or_default()
        };
        let tcp = |pick: fn(&TcpReport) -> u64| {
            m.tcp
                .as_ref()
                .map(|t| pick(t).to_string())
                .unwrap_or_default()
        };
        writer.write_record([
            report.kind.clone(),
            report.from.endpoint.clone(),
            report.to.endpoint.clone(),
            path.as_str().unwrap_or_default().to_owned(),
            m.size_bytes.to_string(),
            m.response_size_bytes
                .map(|r| r.to_string())
                .unwrap_or_default(),
            m.repetition.to_string(),
            m.throughput_bits_per_second
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
            m.messages_per_second
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default(),
            latency(|l| l.p50_ns),
            latency(|l| l.p90_ns),
            latency(|l| l.p99_ns),
            latency(|l| l.p999_ns),
            latency(|l| l.max_ns),
            udp(|u| u.sent),
            udp(|u| u.received),
            udp(|u| u.lost),
            udp(|u| u.jitter_ns),
            tcp(|t| t.retransmits),
            tcp(|t| t.rtt_us),
            format!("{:.6}", m.cpu.client_seconds),
            format!("{:.6}", m.cpu.server_seconds),
            m.complete.to_string(),
            m.errors.join("; "),
        ])?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|err| crate::Error::other("writing CSV", err.into_error()))?;
    // The writer was given only strings.
    String::from_utf8(bytes).map_err(|err| crate::Error::other("CSV output", err))
}
