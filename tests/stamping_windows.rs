//! A sampled run is stamped in windows, 100 ms of every second of the wall clock: between
//! them its skb hooks are detached, and just before one they are attached with stamping held
//! back. A run that follows every packet keeps them attached and stamping, for the sampled
//! runs beside it too.
//!
//! Observed through drops: `BPF_PROG_TEST_RUN` hands the uplink's classifier a packet in an
//! skb that the kernel frees with `kfree_skb` when the run ends, so a followed packet run in
//! a window is reported dropped, and one run between windows is not (the drop hook is off).
//! The skbs of successive runs mostly take the same address: a slot left between windows
//! must not be taken for a packet of the next window that is not followed.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sonde_common::stages::{sampled, side};
use sonde_daemon::{
    object::EbpfObject,
    stages::{
        RunTrace, TraceReport, TraceSpec, TracedFlow, Tracer, Ways,
        cost::tcp_segment,
        windows::{LEAD, OPEN, PERIOD},
    },
};
use sonde_integration::require_root;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 242, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 242, 1, 1);
const SAMPLED_PORT: u16 = 5301;
const EVERY_PACKET_PORT: u16 = 5302;
const CLIENT_PORT: u16 = 40003;
const SAMPLE_SHIFT: u8 = 4;
const PACKETS: usize = 5;

/// Traces the flow to `server_port`, following 1 packet in 2^`sample_shift`.
fn trace(tracer: &Arc<Tracer>, server_port: u16, sample_shift: u8) -> RunTrace {
    let spec = TraceSpec {
        flows: vec![TracedFlow {
            client: IpAddr::V4(CLIENT),
            server: IpAddr::V4(SERVER),
            server_port,
            protocol: 6,
        }],
        pod_interface: None,
        uplink_interface: None,
        sample_shift,
        ways: Ways::Both,
        dns_ids: false,
        windowed: false,
    };
    tracer
        .trace(&spec, side::CLIENT, 0)
        .expect("trace the flow")
}

/// `PACKETS` sequence numbers of the sampled flow from the `batch`th batch on: those its
/// sampling follows, or those it passes over.
fn ids(batch: usize, followed: bool) -> Vec<u32> {
    (1..)
        .filter(|id| sampled(*id, SAMPLE_SHIFT) == followed)
        .skip(batch * PACKETS)
        .take(PACKETS)
        .collect()
}

/// Runs segments `ids` of the sampled flow through the uplink's egress classifier.
fn send(tracer: &Tracer, ids: &[u32]) {
    for id in ids {
        let packet = tcp_segment(CLIENT, SERVER, (CLIENT_PORT, SAMPLED_PORT), *id, 100);
        tracer
            .test_run("sonde_node_out", &packet, 1)
            .expect("run the classifier");
    }
}

/// Where the wall clock is in its current period.
fn into_period() -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is past 1970");
    Duration::from_nanos((now.as_nanos() % PERIOD.as_nanos()) as u64)
}

/// Waits until `at` into a period, then runs `ids` through the classifier, and tells whether
/// that happened before `by` into the same period (a stalled machine may miss it: retry).
fn send_between(tracer: &Tracer, at: Duration, by: Duration, ids: &[u32]) -> bool {
    let now = into_period();
    let wait = if now <= at {
        at - now
    } else {
        PERIOD - now + at
    };
    std::thread::sleep(wait);
    send(tracer, ids);
    let done = into_period();
    done >= at && done < by
}

/// Runs `PACKETS` followed segments between two windows, `PACKETS` more just before the
/// next window opens, then in the window `PACKETS` that are not followed and `PACKETS` that
/// are, and reports the sampled trace.
fn between_then_in_a_window(tracer: &Arc<Tracer>, sampled_trace: RunTrace) -> TraceReport {
    let ms = Duration::from_millis;
    // Well after a window closed (at 100 ms); late in the lead before the next, when its
    // hooks are attached (at 950 ms) but stamping is held back; and well within the window
    // (opened at 0 ms).
    let closed = (ms(400), ms(900));
    let ready = (PERIOD - LEAD + ms(25), PERIOD - ms(2));
    let open = (ms(40), OPEN - ms(10));
    let mut batch = 0;
    for ((at, by), passed_over) in [(closed, false), (ready, false), (open, true)] {
        let packets = |batch| {
            let mut packets = if passed_over {
                ids(batch, false)
            } else {
                Vec::new()
            };
            packets.extend(ids(batch, true));
            packets
        };
        while !send_between(tracer, at, by, &packets(batch)) {
            batch += 1;
            assert!(batch < 8, "the machine kept missing the moment");
        }
        batch += 1;
    }
    sampled_trace.finish()
}

fn drops(report: &TraceReport) -> u64 {
    report.drops.iter().map(|d| d.count).sum()
}

fn with_tracer(test: impl FnOnce(&Arc<Tracer>) + Send + 'static) {
    require_root();
    std::thread::spawn(move || {
        sonde_daemon::mounts::ensure_tracefs().expect("tracefs for this thread");
        let btf = aya::Btf::from_sys_fs().expect("this kernel has BTF");
        let object = EbpfObject::load_with_btf(Some(&btf)).expect("load sonde's eBPF object");
        let tracer =
            Tracer::new(Arc::new(Mutex::new(object)), Some(&btf)).expect("start the tracer");
        test(&tracer);
    })
    .join()
    .expect("the test thread");
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_sampled_runs_skb_hooks_are_off_between_windows() {
    with_tracer(|tracer| {
        let report = between_then_in_a_window(tracer, trace(tracer, SAMPLED_PORT, SAMPLE_SHIFT));
        // Only the followed packets run in the window were seen dropped: not those run
        // between windows (hooks off), nor those run just before one (stamping held back).
        assert_eq!(drops(&report), PACKETS as u64, "{:?}", report.drops);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("stamped in windows, 100 ms of every 1 s")),
            "{:?}",
            report.notes
        );
    });
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_run_following_every_packet_keeps_the_hooks_on_for_all() {
    with_tracer(|tracer| {
        // The run that follows every packet first: the windows' thread may close a window
        // the moment a sampled run alone starts it.
        let every_packet = trace(tracer, EVERY_PACKET_PORT, 0);
        let sampled_trace = trace(tracer, SAMPLED_PORT, SAMPLE_SHIFT);
        let report = between_then_in_a_window(tracer, sampled_trace);
        drop(every_packet);
        // Every followed batch was seen dropped: the hooks never came off, nor was stamping
        // held back.
        assert_eq!(drops(&report), 3 * PACKETS as u64, "{:?}", report.drops);
        assert!(
            !report.notes.iter().any(|n| n.contains("windows")),
            "{:?}",
            report.notes
        );
    });
}
