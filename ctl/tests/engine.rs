//! The run engine against real daemons served in process on loopback (real gRPC, real
//! generators, no root): plans run concurrently on one session, a failure of one plan leaves
//! the others whole, cancelling stops both sides on every daemon, and a daemon that vanishes
//! mid-run is reported as such while the session goes on.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use sonde_ctl::{
    cli::RunKindArg,
    endpoint::{Destination, PathKind, Place},
    engine::Session,
    run::execute::{Ends, Plan},
};
use sonde_daemon::{
    facts::{FactsSource, NodeFacts},
    grpc::AgentService,
    runs::{Runs, policy::TargetPolicy},
    server,
};
use tokio::sync::oneshot;

struct Facts(&'static str);

impl FactsSource for Facts {
    fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            node_name: self.0.to_owned(),
            kernel_release: format!("kernel-of-{}", self.0),
            daemon_version: String::new(),
            started_at_unix_ns: 0,
            pid: 0,
            capabilities: Vec::new(),
            programs: Vec::new(),
            pod_interfaces: Vec::new(),
        }
    }
}

/// A daemon served in process on loopback.
struct Daemon {
    addr: String,
    runs: Arc<Runs>,
    /// Stops its gRPC server (the daemon "vanishes": its port closes).
    stop: Option<oneshot::Sender<()>>,
}

async fn daemon(name: &'static str) -> Daemon {
    sonde_ctl::tls::choose(sonde_ctl::tls::Credentials::Plaintext);
    let listener = server::Listener::bind(&"127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let runs = Arc::new(Runs::default());
    let _reaper = runs.spawn_reaper();
    let agent = AgentService::new(
        Arc::new(Facts(name)),
        Arc::clone(&runs),
        TargetPolicy::default(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::run(
        listener,
        server::Security::Plaintext,
        agent,
        async {
            let _ = stopped.await;
        },
        Duration::from_millis(100),
    ));
    Daemon {
        addr: addr.to_string(),
        runs,
        stop: Some(stop),
    }
}

fn place(agent: &str, node: &str) -> Place {
    Place {
        agent: agent.to_owned(),
        node: Some(node.to_owned()),
        pod: None,
        netns: String::new(),
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        host_interface: None,
        uplink: None,
        hairpin_source: None,
        zone: None,
    }
}

/// An untraced `kind` run from the daemon at `from` to the one at `to`.
fn plan(kind: RunKindArg, from: &str, to: &str, duration: Duration) -> Plan {
    let source = place(from, "client-node");
    let server = place(to, "server-node");
    let ends = Ends {
        from: format!("node/{from}"),
        to: format!("node/{to}"),
        destination: Destination {
            servers: vec![server],
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            server_port: None,
            follow: None,
        },
        source,
        path: PathKind::Host,
    };
    let mut plan = Plan::between(kind, ends, Duration::from_secs(2)).expect("plan");
    plan.duration = duration;
    plan.warmup = Duration::ZERO;
    plan.trace = false;
    plan
}

fn held(daemon: &Daemon) -> (usize, usize) {
    daemon.runs.counts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_run_concurrently_on_one_session_with_one_connection_per_daemon() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    let session = Session::new(Duration::from_secs(2));
    let mut rr = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &b.addr,
        Duration::from_millis(400),
    );
    rr.repetitions = 2;
    let stream = plan(
        RunKindArg(&sonde_proto::kinds::TCP_STREAM),
        &b.addr,
        &a.addr,
        Duration::from_millis(400),
    );
    let started = Instant::now();
    let (rr_report, stream_report) = tokio::join!(session.run(&rr), session.run(&stream));
    let wall = started.elapsed();

    assert!(rr_report.complete, "{:?}", rr_report.errors);
    assert!(stream_report.complete, "{:?}", stream_report.errors);
    assert_eq!(rr_report.measurements.len(), 2);
    assert!(
        rr_report
            .measurements
            .iter()
            .all(|m| m.messages_per_second.is_some_and(|rate| rate > 0.0))
    );
    assert!(
        stream_report.measurements[0]
            .throughput_bits_per_second
            .is_some_and(|bits| bits > 0.0)
    );
    // The kernels come from each end's own daemon.
    assert_eq!(rr_report.from.kernels, vec!["kernel-of-a".to_owned()]);
    assert_eq!(rr_report.to.kernels, vec!["kernel-of-b".to_owned()]);
    // Concurrent, not one after the other: two 0.4 s measurements of rr, one of stream, in
    // well under the 1.2 s they would take in series plus their set-up.
    assert!(wall < Duration::from_millis(1150), "took {wall:?}");
    assert_eq!(session.runs_in_flight(), 0);
    assert_eq!((held(&a), held(&b)), ((0, 0), (0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plan_leaves_the_others_whole() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    // A daemon that is gone before the plan starts: nothing listens at its port.
    let gone = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").to_string()
    };
    let session = Session::new(Duration::from_millis(500));
    let good = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &b.addr,
        Duration::from_millis(300),
    );
    let bad = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &gone,
        Duration::from_millis(300),
    );
    let (good, bad) = tokio::join!(session.run(&good), session.run(&bad));
    assert!(good.complete, "{:?}", good.errors);
    assert!(!bad.complete);
    assert_eq!(
        bad.measurements.len(),
        1,
        "the failure is kept as a measurement"
    );
    let errors = bad.errors.join("; ");
    assert!(
        errors.contains(&gone) && errors.contains("refused the server side")
            || errors.contains("cannot connect"),
        "{errors}"
    );
    // The failed plan never started its client side, and nothing is left behind.
    assert_eq!((held(&a), held(&b)), ((0, 0), (0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_session_stops_both_sides_everywhere_and_keeps_what_was_measured() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    let session = Arc::new(Session::new(Duration::from_secs(2)));
    let mut long = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &b.addr,
        Duration::from_millis(300),
    );
    // Eight measurements of 0.3 s: the first few land before the cancel, the rest never start.
    long.repetitions = 2;
    long.sizes = vec![
        (1, Some(1)),
        (64, Some(64)),
        (256, Some(256)),
        (1024, Some(1024)),
    ];
    long.duration = Duration::from_millis(300);
    let mut tail = long.clone();
    tail.duration = Duration::from_secs(30);
    tail.sizes = vec![(1, Some(1))];
    tail.repetitions = 1;
    let canceller = {
        let session = Arc::clone(&session);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            session.cancel().await;
        })
    };
    let started = Instant::now();
    let (done, cut) = tokio::join!(session.run(&long), session.run(&tail));
    let wall = started.elapsed();
    canceller.await.expect("canceller");

    assert!(wall < Duration::from_secs(5), "cancel took {wall:?}");
    assert!(!cut.complete);
    assert!(cut.errors.iter().any(|e| e.contains("cancelled")));
    assert!(
        done.measurements.iter().filter(|m| m.complete).count() >= 1,
        "measurements before the cancel are kept"
    );
    assert!(
        done.measurements.len() < 8,
        "nothing new starts once cancelled"
    );
    // Both daemons let go of every side (the client side stops within its 100 ms poll).
    let deadline = Instant::now() + Duration::from_secs(3);
    while (held(&a), held(&b)) != ((0, 0), (0, 0)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((held(&a), held(&b)), ((0, 0), (0, 0)));
    // A cancelled session starts nothing.
    let after = session
        .run(&plan(
            RunKindArg(&sonde_proto::kinds::TCP_RR),
            &a.addr,
            &b.addr,
            Duration::from_millis(100),
        ))
        .await;
    assert!(after.measurements.is_empty() && !after.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_vanishes_mid_run_is_reported_and_the_session_goes_on() {
    let (a, mut b, c) = (daemon("a").await, daemon("b").await, daemon("c").await);
    let session = Session::new(Duration::from_millis(800));
    let to_b = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &b.addr,
        Duration::from_millis(800),
    );
    let stop_b = b.stop.take().expect("stop");
    let vanish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_b.send(());
    };
    let (report, ()) = tokio::join!(session.run(&to_b), vanish);
    assert!(!report.complete);
    let errors = report.errors.join("; ");
    assert!(errors.contains("server side on"), "{errors}");
    // The client side, on a daemon still there, measured the run.
    assert!(
        report.measurements[0]
            .messages_per_second
            .is_some_and(|rate| rate > 0.0)
    );
    // The session still works with the daemons that are left.
    let to_c = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &a.addr,
        &c.addr,
        Duration::from_millis(200),
    );
    let after = session.run(&to_c).await;
    assert!(after.complete, "{:?}", after.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_offsets_are_cached_per_pair_of_daemons() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    let session = Session::new(Duration::from_secs(2));
    let first = session.clock(&a.addr, &b.addr, false).await.expect("clock");
    let started = Instant::now();
    let again = session.clock(&a.addr, &b.addr, false).await.expect("clock");
    assert_eq!(first, again);
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "not re-estimated"
    );
    assert_eq!(session.clocks_cached(), 1);
    // A forced estimate measures again and is not cached over the kept one.
    let forced = session.clock(&a.addr, &b.addr, true).await.expect("clock");
    assert_eq!(forced.method, "ntp-style");
    assert_eq!(session.clocks_cached(), 1);
}

/// Run holds a daemon recorded: (holder session, class, started, ended).
async fn holds(daemon: &Daemon) -> Vec<(String, i32, u64, u64)> {
    let mut client =
        sonde_proto::v1::agent_client::AgentClient::connect(format!("http://{}", daemon.addr))
            .await
            .expect("connect");
    client
        .list_reservations(sonde_proto::v1::ListReservationsRequest {})
        .await
        .expect("list")
        .into_inner()
        .runs
        .into_iter()
        .map(|run| {
            (
                run.holder.map(|h| h.session).unwrap_or_default(),
                run.class,
                run.started_at_unix_ms,
                run.ended_at_unix_ms,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measurement_waits_for_nodes_another_session_holds_and_says_for_whom() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    let first = Session::new(Duration::from_secs(2)).for_scenario("first");
    let second = Session::new(Duration::from_secs(2));
    let stream = plan(
        RunKindArg(&sonde_proto::kinds::TCP_STREAM),
        &a.addr,
        &b.addr,
        Duration::from_millis(1200),
    );
    let rr = plan(
        RunKindArg(&sonde_proto::kinds::TCP_RR),
        &b.addr,
        &a.addr,
        Duration::from_millis(300),
    );
    let late_rr = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        second.run(&rr).await
    };
    let (streamed, waited) = tokio::join!(first.run(&stream), late_rr);
    assert!(streamed.complete, "{:?}", streamed.errors);
    assert!(waited.complete, "{:?}", waited.errors);
    assert!(
        waited.waited_seconds > 0.5,
        "waited {}",
        waited.waited_seconds
    );
    let why = waited.waits.join("; ");
    assert!(
        why.contains(first.id()) && why.contains("scenario first") && why.contains("exclusive"),
        "{why}"
    );
    // The daemons' own records: the two sessions never held a node at once.
    for daemon in [&a, &b] {
        let runs = holds(daemon).await;
        assert_eq!(runs.len(), 2, "one side of each run per daemon");
        let of = |session: &str| {
            runs.iter()
                .find(|run| run.0 == session)
                .unwrap_or_else(|| panic!("no hold of {session}"))
        };
        let (s, r) = (of(first.id()), of(second.id()));
        assert!(
            r.2 >= s.3,
            "rr started {} before the stream ended {}",
            r.2,
            s.3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measurement_that_waits_too_long_fails_naming_the_holder() {
    let (a, b) = (daemon("a").await, daemon("b").await);
    let holder = Session::new(Duration::from_secs(2)).for_scenario("holder");
    let impatient = Session::new(Duration::from_secs(2)).with_max_wait(Duration::from_millis(300));
    let held = holder
        .reserve(
            std::slice::from_ref(&a.addr),
            sonde_ctl::scenario::spec::Class::Exclusive,
            Duration::from_secs(30),
            "a long stream",
        )
        .await
        .expect("reserve");
    let report = impatient
        .run(&plan(
            RunKindArg(&sonde_proto::kinds::TCP_CRR),
            &a.addr,
            &b.addr,
            Duration::from_millis(200),
        ))
        .await;
    assert!(!report.complete);
    let errors = report.errors.join("; ");
    assert!(
        errors.contains("held by someone else") && errors.contains("scenario holder"),
        "{errors}"
    );
    assert!(errors.contains("a long stream"), "{errors}");
    // Nothing ran on either daemon.
    assert!(holds(&a).await.is_empty() && holds(&b).await.is_empty());
    // Released, the node is free again.
    holder.release(&held).await;
    let after = impatient
        .run(&plan(
            RunKindArg(&sonde_proto::kinds::TCP_CRR),
            &a.addr,
            &b.addr,
            Duration::from_millis(200),
        ))
        .await;
    assert!(after.complete, "{:?}", after.errors);
}
