//! The report as a table for people: the figures, the kernel breakdown, conntrack, DNS
//! answers and errors.

use super::model::*;
use crate::run::sizes::human;

/// Bits per second for people.
pub fn bits(bps: f64) -> String {
    match bps {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.2} kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

/// Nanoseconds for people.
pub fn nanos(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}us", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

/// The table: one row per measurement.
pub fn table(report: &RunReport) -> String {
    let mut table = crate::output::table(&[
        "SIZE",
        "REP",
        "THROUGHPUT",
        "MSG/S",
        "P50",
        "P90",
        "P99",
        "P99.9",
        "MAX",
        "LOSS",
        "RETRANS",
        "CPU C/S",
    ]);
    for m in &report.measurements {
        let latency = |pick: fn(&Latency) -> u64| {
            m.latency
                .as_ref()
                .map(|l| nanos(pick(l)))
                .unwrap_or_else(|| "-".to_owned())
        };
        let size = match m.response_size_bytes {
            Some(response) if response != m.size_bytes => {
                format!("{}/{}", human(m.size_bytes), human(response))
            }
            _ => human(m.size_bytes),
        };
        let cpu = |side: Option<&SideReport>, seconds: f64| {
            side.map_or_else(|| "-".to_owned(), |_| format!("{seconds:.2}"))
        };
        let figure = |value: Option<f64>, show: fn(f64) -> String| {
            value.map_or_else(|| "-".to_owned(), show)
        };
        table.add_row([
            size,
            m.repetition.to_string(),
            figure(m.throughput_bits_per_second, bits),
            figure(m.messages_per_second, |v| format!("{v:.0}")),
            latency(|l| l.p50_ns),
            latency(|l| l.p90_ns),
            latency(|l| l.p99_ns),
            latency(|l| l.p999_ns),
            latency(|l| l.max_ns),
            m.udp
                .as_ref()
                .map(|u| format!("{:.3}%", u.loss_ratio * 100.0))
                .unwrap_or_else(|| "-".to_owned()),
            m.tcp
                .as_ref()
                .filter(|_| m.client.is_some() || m.server.is_some())
                .map(|t| t.retransmits.to_string())
                .unwrap_or_else(|| "-".to_owned()),
            format!(
                "{}/{}s",
                cpu(m.client.as_ref(), m.cpu.client_seconds),
                cpu(m.server.as_ref(), m.cpu.server_seconds)
            ),
        ]);
    }
    let mut text = format!(
        "{} {} -> {} ({:?} path, {} x {:.1}s, warm-up {:.1}s, parallel {})\n\n{}\n",
        report.kind,
        report.from.endpoint,
        report.to.endpoint,
        report.path,
        report.spec.repetitions,
        report.spec.duration_seconds,
        report.spec.warmup_seconds,
        report.spec.parallel,
        crate::output::trim_lines(&table)
    );
    for m in &report.measurements {
        if let Some(kernel) = &m.kernel {
            text.push('\n');
            text.push_str(&kernel_table(m, kernel, breakdown_unit(&report.kind)));
        }
    }
    // One line per node and measurement, only when a table moved or was pressed.
    for m in &report.measurements {
        for table in &m.conntrack {
            if table.created == 0 && !table.pressed() {
                continue;
            }
            text.push_str(&format!(
                "conntrack {} (size {}): {} -> {} of {} entries, {} new, {} failed inserts, {} drops, {} early drops{}\n",
                table.node,
                human(m.size_bytes),
                table.entries_start,
                table.entries_end,
                table.max,
                table.created,
                table.insert_failed,
                table.drop,
                table.early_drop,
                if table.events_lost { " (events lost: new is low)" } else { "" },
            ));
        }
    }
    // DNS answers by response code, and the queries lost.
    for m in &report.measurements {
        if let Some(udp) = m
            .udp
            .as_ref()
            .filter(|u| !u.rcodes.is_empty() || u.lost > 0)
            && report.kind == sonde_proto::kinds::DNS.name
        {
            let rcodes: Vec<String> = udp
                .rcodes
                .iter()
                .map(|(rcode, count)| format!("{rcode} {count}"))
                .collect();
            text.push_str(&format!(
                "dns #{}: {} queries, answers {}, {} lost (no answer within 1 s)\n",
                m.repetition,
                udp.sent,
                if rcodes.is_empty() {
                    "none".to_owned()
                } else {
                    rcodes.join(", ")
                },
                udp.lost,
            ));
        }
    }
    for m in &report.measurements {
        if let Some(until) = &m.until_failure {
            text.push_str(&format!(
                "{} #{} until it failed: the client reported {}, {:.0} msg/s over {:.1}s measured (its live progress; not a complete measurement)\n",
                human(m.size_bytes),
                m.repetition,
                bits(until.bits_per_second),
                until.messages_per_second,
                until.measured_seconds,
            ));
        }
    }
    for error in &report.errors {
        text.push_str(&format!("error: {error}\n"));
    }
    text
}

/// What a kind's kernel breakdown sums up: one transaction's packets for request/response
/// kinds, one packet's stages for streams (the kind's rule; a packet for a name not known).
pub fn breakdown_unit(kind: &str) -> &'static str {
    sonde_proto::kinds::KindRules::by_name(kind).map_or("packet", |rules| rules.breakdown_unit())
}

/// The kernel breakdown of one measurement, under the figures; `per` names what its sum of
/// stage means is per ("transaction" for request/response kinds, "packet" for streams).
pub fn kernel_table(
    m: &Measurement,
    kernel: &crate::run::breakdown::Breakdown,
    per: &str,
) -> String {
    let signed = |ns: i64| {
        if ns < 0 {
            format!("-{}", nanos(ns.unsigned_abs()))
        } else {
            nanos(ns as u64)
        }
    };
    let mut table = crate::output::table(&[
        "DIRECTION",
        "STAGE",
        "NODE",
        "SAMPLES",
        "MEAN",
        "P50",
        "P90",
        "P99",
        "MAX",
        "ERROR",
    ]);
    for direction in &kernel.directions {
        for stage in &direction.stages {
            let l = &stage.latency;
            table.add_row([
                direction.direction.to_owned(),
                stage.name.clone(),
                stage.node.clone(),
                l.samples.to_string(),
                signed(l.mean_ns as i64),
                signed(l.p50_ns),
                signed(l.p90_ns),
                signed(l.p99_ns),
                signed(l.max_ns),
                if stage.name == "wire" {
                    format!("±{}", nanos(stage.error_ns))
                } else {
                    "-".to_owned()
                },
            ]);
        }
    }
    let mut text = format!(
        "kernel breakdown, {} #{} (clock: {}, offset {} ±{})\n{}\n",
        human(m.size_bytes),
        m.repetition,
        kernel.clock.method,
        signed(kernel.clock.offset_ns),
        nanos(kernel.clock.error_ns),
        crate::output::trim_lines(&table)
    );
    text.push_str(&format!(
        "kernel stages, mean per {per} (both ways): {}",
        nanos(kernel.kernel_mean_ns as u64)
    ));
    if let Some(app) = kernel.application_mean_ns {
        text.push_str(&format!(
            "; application latency, mean: {}",
            nanos(app as u64)
        ));
    }
    text.push('\n');
    if let Some(connect) = &kernel.connect {
        text.push_str(&format!(
            "TCP connect (SYN_SENT to ESTABLISHED): {} samples, p50 {}, p99 {}\n",
            connect.samples,
            signed(connect.p50_ns),
            signed(connect.p99_ns)
        ));
    }
    text.push_str(&format!(
        "retransmits {}; kernel events {} (lost {})\n",
        kernel.retransmits, kernel.events, kernel.events_lost
    ));
    for drop in &kernel.drops {
        text.push_str(&format!(
            "dropped: {} {} after {} ({})\n",
            drop.count, drop.reason, drop.after, drop.node
        ));
    }
    let costs: Vec<String> = kernel
        .programs
        .iter()
        .map(|p| {
            let each = p
                .ns_per_invocation
                .map_or_else(|| "?".to_owned(), |ns| format!("{ns:.0}"));
            format!(
                "{}:{} {}x{each}ns",
                p.node,
                p.name.trim_start_matches("sonde_"),
                p.invocations,
            )
        })
        .collect();
    if !costs.is_empty() {
        text.push_str(&format!("probe cost: {}\n", costs.join(", ")));
    }
    for note in &kernel.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text
}
