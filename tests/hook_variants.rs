//! The socket hooks come in two variants: BTF tracepoints (tp_btf, where the kernel has BTF)
//! and classic tracepoints (everywhere else). This kernel has both, so both are tested: each
//! variant must follow a traced packet to its drop and name the kernel's drop reason.
//!
//! The drop is real: `BPF_PROG_TEST_RUN` hands the classifier a packet in an skb that the
//! kernel frees with `kfree_skb` when the run ends (reason `NOT_SPECIFIED`). The programs'
//! own run counters are checked on the way, and so is a stamp held back: a packet's first
//! point on a node keeps its stamp for the packet's next point there, and a packet freed
//! before one (as this one is) has it sent on its own.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use sonde_common::stages::{point, side};
use sonde_daemon::{
    object::EbpfObject,
    stages::{TraceReport, TraceSpec, TracedFlow, Tracer, Ways, cost::tcp_segment},
};
use sonde_integration::require_root;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 241, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 241, 1, 1);
const SERVER_PORT: u16 = 5202;
const CLIENT_PORT: u16 = 40002;
const PACKETS: u32 = 5;

/// Runs [`drop_test_packets`] on a thread of its own, which mounts tracefs (where classic
/// tracepoints are found) in a mount namespace of its own when the machine has none mounted,
/// as `sonded` does at start.
fn on_a_thread_with_tracefs(with_btf: bool, program: &'static str) -> TraceReport {
    std::thread::spawn(move || {
        sonde_daemon::mounts::ensure_tracefs().expect("tracefs for this thread");
        let btf = with_btf.then(|| aya::Btf::from_sys_fs().expect("this kernel has BTF"));
        drop_test_packets(btf.as_ref(), program)
    })
    .join()
    .expect("the test thread")
}

/// Traces one flow with the socket hooks attached (no interface), runs `PACKETS` of its
/// segments through the classifier `program` and reports.
fn drop_test_packets(btf: Option<&aya::Btf>, program: &str) -> TraceReport {
    let object = EbpfObject::load_with_btf(btf).expect("load sonde's eBPF object");
    let tracer = Tracer::new(Arc::new(Mutex::new(object)), btf).expect("start the tracer");
    let spec = TraceSpec {
        flows: vec![TracedFlow {
            client: IpAddr::V4(CLIENT),
            server: IpAddr::V4(SERVER),
            server_port: SERVER_PORT,
            protocol: 6,
        }],
        pod_interface: None,
        uplink_interface: None,
        sample_shift: 0,
        ways: Ways::Both,
        dns_ids: false,
        windowed: false,
    };
    let trace = tracer
        .trace(&spec, side::CLIENT, 0)
        .expect("trace the flow");
    for seq in 0..PACKETS {
        let packet = tcp_segment(
            CLIENT,
            SERVER,
            (CLIENT_PORT, SERVER_PORT),
            1000 + seq * 100,
            100,
        );
        tracer
            .test_run(program, &packet, 1)
            .expect("run the classifier");
    }
    trace.finish()
}

/// The classifier counted its own runs exactly, and the kernel's statistics (on for a tenth
/// of each second of the wall clock, whenever these packets ran) timed no more runs than that.
fn assert_counted(report: &TraceReport) {
    let classifier = report
        .programs
        .iter()
        .find(|p| p.name == "sonde_node_out")
        .expect("the classifier's cost");
    assert_eq!(classifier.invocations, u64::from(PACKETS), "{classifier:?}");
    assert!(
        classifier.timed_invocations <= classifier.invocations,
        "{classifier:?}"
    );
}

fn assert_dropped(report: &TraceReport, at: u8) {
    let drops: Vec<_> = report
        .drops
        .iter()
        .map(|d| (d.reason.as_str(), d.point, d.count))
        .collect();
    assert_eq!(
        drops,
        [("NOT_SPECIFIED", at, u64::from(PACKETS))],
        "hooks: {:?}, notes: {:?}",
        report.hooks,
        report.notes
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn btf_tracepoints_follow_a_packet_to_its_drop() {
    require_root();
    let report = on_a_thread_with_tracefs(true, "sonde_node_out");
    for hook in [
        "tp_btf:kfree_skb",
        "tp_btf:consume_skb",
        "tp_btf:skb_copy_datagram_iovec",
    ] {
        assert!(report.hooks.iter().any(|h| h == hook), "{:?}", report.hooks);
    }
    assert_dropped(&report, point::NODE_OUT);
    assert_counted(&report);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn classic_tracepoints_serve_a_kernel_without_btf() {
    require_root();
    let report = on_a_thread_with_tracefs(false, "sonde_node_out");
    for hook in [
        "tracepoint:skb:kfree_skb",
        "tracepoint:skb:consume_skb",
        "tracepoint:skb:skb_copy_datagram_iovec",
    ] {
        assert!(report.hooks.iter().any(|h| h == hook), "{:?}", report.hooks);
    }
    assert!(
        !report.hooks.iter().any(|h| h.starts_with("tp_btf:")),
        "{:?}",
        report.hooks
    );
    // The send hook exists only as a BTF tracepoint: its absence is said.
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("tcp_sendmsg_locked")),
        "{:?}",
        report.notes
    );
    assert_dropped(&report, point::NODE_OUT);
    assert_counted(&report);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_first_points_stamp_held_back_goes_out_when_its_packet_is_freed_before_a_next_point() {
    require_root();
    for with_btf in [true, false] {
        for program in ["sonde_pod_out", "sonde_pod_out_counted"] {
            let report = on_a_thread_with_tracefs(with_btf, program);
            // Each packet's one stamp (leaving its pod) arrived: sent when its skb was freed.
            assert_eq!(
                report.collected.packets,
                u64::from(PACKETS),
                "{program}, btf {with_btf}: {report:?}"
            );
            assert_dropped(&report, point::POD_OUT);
        }
    }
}
