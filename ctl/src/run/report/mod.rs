//! The result of `sondectl run`: one JSON document (schema: `docs/schema/run-result.v1.json`),
//! from which the table and the CSV are rendered.
//!
//! # Layout
//! - [`model`]: the document's serde model.
//! - [`derive`]: a measurement from the daemons' side results.
//! - [`table`], [`csv`]: the renderers.

pub mod csv;
pub mod derive;
pub mod model;
pub mod table;

pub use csv::csv;
pub(crate) use derive::decode_histogram;
pub use derive::{measurement, merge_sides};
pub use model::*;
pub use table::{bits, breakdown_unit, kernel_table, nanos, table};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sonde_proto::v1 as pb;

    use super::*;
    use crate::endpoint::PathKind;

    fn progress(elapsed_ms: u64, bytes: u64, messages: u64) -> pb::Progress {
        pb::Progress {
            elapsed_ms,
            warmup: false,
            bytes,
            messages,
            interval_ms: 500,
        }
    }

    #[test]
    fn live_counts_keep_only_intervals_after_the_warm_up() {
        let mut live = LiveCounts::default();
        assert_eq!(live.until_failure(), None, "nothing measured yet");
        let warmup = Duration::from_millis(1000);
        // 0.5-1.0 s is warm-up; 0.7-1.2 s straddles its end; 1.2-1.7 s and 1.7-2.2 s count.
        live.add(&progress(1000, 1_000_000, 10), warmup);
        live.add(
            &pb::Progress {
                interval_ms: 500,
                ..progress(1200, 7, 7)
            },
            warmup,
        );
        assert_eq!(live.until_failure(), None, "warm-up only");
        live.add(&progress(1700, 250_000_000, 100), warmup);
        live.add(&progress(2200, 250_000_000, 300), warmup);
        let until = live.until_failure().expect("a second measured");
        assert_eq!(until.measured_seconds, 1.0);
        assert_eq!(until.bytes, 500_000_000);
        assert_eq!(until.messages, 400);
        assert_eq!(until.bits_per_second, 4e9);
        assert_eq!(until.messages_per_second, 400.0);
    }

    fn report(
        client: Option<&pb::SideResult>,
        server: Option<&pb::SideResult>,
        live: LiveCounts,
    ) -> RunReport {
        let sample = Sample {
            shape: Shape::StreamForward,
            transport: Transport::Tcp,
            size: 131_072,
            response_size: None,
            repetition: 1,
            server_side: true,
        };
        let m = measurement(
            &sample,
            client,
            server,
            &live,
            vec!["client side: gone".to_owned()],
        );
        let end = |name: &str| EndReport {
            endpoint: name.to_owned(),
            places: Vec::new(),
            ip: None,
            kernels: Vec::new(),
        };
        RunReport {
            schema: SCHEMA,
            sonde_version: "test",
            started_at_unix_seconds: 0,
            kind: "tcp-stream".to_owned(),
            from: end("pod/pod1"),
            to: end("pod/pod3"),
            path: PathKind::PodIp,
            spec: SpecReport {
                duration_seconds: 6.0,
                warmup_seconds: 0.0,
                parallel: 1,
                rate: 0.0,
                direction: "forward".to_owned(),
                plain_io: false,
                repetitions: 1,
                sizes_bytes: vec![131_072],
                dns_name: None,
                dns_types: Vec::new(),
            },
            measurements: vec![m],
            complete: false,
            errors: Vec::new(),
            waited_seconds: 0.0,
            waits: Vec::new(),
        }
    }

    /// The cells of the table's one measurement row.
    fn row_cells(text: &str) -> Vec<&str> {
        text.lines()
            .find(|line| line.starts_with("128KiB"))
            .expect("the measurement's row")
            .split_whitespace()
            .collect()
    }

    #[test]
    fn a_failed_side_shows_no_figure_but_what_its_progress_said() {
        let mut live = LiveCounts::default();
        live.add(&progress(500, 1_250_000_000, 9_000), Duration::ZERO);
        let text = table(&report(None, None, live));
        let cells = row_cells(&text);
        assert_eq!(cells[2..4], ["-", "-"], "{text}");
        assert_eq!(cells[cells.len() - 2..], ["-", "-/-s"], "{text}");
        assert!(
            text.contains(
                "128KiB #1 until it failed: the client reported 20.00 Gbit/s, 18000 msg/s over 0.5s measured"
            ),
            "{text}"
        );
        let json = serde_json::to_value(report(None, None, live)).expect("JSON");
        let m = &json["measurements"][0];
        assert_eq!(m["until_failure"]["bytes"], 1_250_000_000);
        assert!(m["throughput_bits_per_second"].is_null(), "{m}");
        assert!(m["messages_per_second"].is_null(), "{m}");
    }

    #[test]
    fn a_side_that_measured_nothing_gives_a_zero_though_the_other_failed() {
        // The server side received nothing before the client failed: that zero is a figure.
        let server = pb::SideResult {
            measured_ns: 1_000_000_000,
            ..Default::default()
        };
        let text = table(&report(None, Some(&server), LiveCounts::default()));
        let cells = row_cells(&text);
        assert_eq!(cells[2..5], ["0", "bit/s", "-"], "{text}");
    }

    #[test]
    fn a_side_that_finished_keeps_its_figures_and_no_progress_line() {
        let client = pb::SideResult {
            measured_ns: 1_000_000_000,
            messages: 5,
            ..Default::default()
        };
        // Progress came in too, but the side's own result is the figure.
        let mut live = LiveCounts::default();
        live.add(&progress(500, 1_000, 5), Duration::ZERO);
        let text = table(&report(Some(&client), None, live));
        // No server result: its throughput is not a figure, the client's message rate is.
        let cells = row_cells(&text);
        assert_eq!(cells[2..4], ["-", "5"], "{text}");
        assert_eq!(cells[cells.len() - 2..], ["0", "0.00/-s"], "{text}");
        assert!(!text.contains("until it failed"), "{text}");
    }
}
