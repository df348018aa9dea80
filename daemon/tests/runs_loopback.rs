//! Runs through the real gRPC API and the real generators, on loopback (no namespaces, no
//! root): each kind's two sides must agree exactly where they can (every request sent was
//! answered, every byte sent was received), and the protocol's guards must hold.

use std::{sync::Arc, time::Duration};

use sonde_daemon::{
    facts::{FactsSource, NodeFacts},
    grpc::AgentService,
    runs::{Runs, policy::TargetPolicy},
    server,
};
use sonde_proto::v1::{self as pb, agent_client::AgentClient, client_event::Event};
use tonic::{Code, transport::Channel};

struct NoFacts;

impl FactsSource for NoFacts {
    fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            node_name: "loopback".to_owned(),
            kernel_release: String::new(),
            daemon_version: String::new(),
            started_at_unix_ns: 0,
            pid: 0,
            capabilities: Vec::new(),
            programs: Vec::new(),
            pod_interfaces: Vec::new(),
        }
    }
}

/// A daemon serving on loopback, its runs, and a client for it.
async fn daemon() -> (AgentClient<Channel>, Arc<Runs>) {
    daemon_with(Runs::default()).await
}

/// As [`daemon`], holding `runs` (under caps of the test's own).
async fn daemon_with(runs: Runs) -> (AgentClient<Channel>, Arc<Runs>) {
    let listener = server::Listener::bind(&"127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let runs = Arc::new(runs);
    let _reaper = runs.spawn_reaper();
    let agent = AgentService::new(
        Arc::new(NoFacts),
        Arc::clone(&runs),
        TargetPolicy::default(),
    );
    tokio::spawn(server::run(
        listener,
        server::Security::Plaintext,
        agent,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let client = AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    (client, runs)
}

fn spec(kind: pb::RunKind, duration_ms: u64, request: u64, response: u64) -> pb::RunSpec {
    pb::RunSpec {
        kind: kind as i32,
        duration_ms,
        warmup_ms: 0,
        parallel: 1,
        request_size: request,
        response_size: response,
        rate: 0.0,
        direction: pb::Direction::ClientToServer as i32,
        plain_io: false,
        ..pb::RunSpec::default()
    }
}

/// A plain server side of `run_id`: the daemon's namespace, any port, no trace.
fn prepare_request(run_id: &str, spec: pb::RunSpec) -> pb::PrepareServerRequest {
    pb::PrepareServerRequest {
        trace: None,
        reservation_id: String::new(),
        run_id: run_id.to_owned(),
        spec: Some(spec),
        netns: String::new(),
        port: 0,
        lease_ms: 0,
        token: Vec::new(),
    }
}

async fn prepare(
    client: &mut AgentClient<Channel>,
    run_id: &str,
    spec: pb::RunSpec,
) -> pb::PrepareServerResponse {
    client
        .prepare_server(prepare_request(run_id, spec))
        .await
        .expect("prepare")
        .into_inner()
}

/// Runs a whole run: prepare, start (draining progress), finish. Returns (client, server).
async fn run(
    client: &mut AgentClient<Channel>,
    run_id: &str,
    spec: pb::RunSpec,
) -> (pb::SideResult, pb::SideResult) {
    let prepared = prepare(client, run_id, spec.clone()).await;
    let client_result = start(client, run_id, spec, prepared.port, prepared.token).await;
    let server = client
        .finish_server(pb::FinishServerRequest {
            run_id: run_id.to_owned(),
        })
        .await
        .expect("finish")
        .into_inner()
        .result
        .expect("server result");
    (client_result, server)
}

/// A plain client side of `run_id` to a loopback server side: untraced, no reservation.
fn start_request(
    run_id: &str,
    spec: pb::RunSpec,
    port: u32,
    token: Vec<u8>,
) -> pb::StartClientRequest {
    pb::StartClientRequest {
        trace: None,
        reservation_id: String::new(),
        run_id: run_id.to_owned(),
        spec: Some(spec),
        netns: String::new(),
        target_ip: "127.0.0.1".to_owned(),
        target_port: port,
        token,
        target_path: String::new(),
    }
}

async fn start(
    client: &mut AgentClient<Channel>,
    run_id: &str,
    spec: pb::RunSpec,
    port: u32,
    token: Vec<u8>,
) -> pb::SideResult {
    let mut stream = client
        .start_client(start_request(run_id, spec, port, token))
        .await
        .expect("start")
        .into_inner();
    loop {
        match stream
            .message()
            .await
            .expect("stream")
            .and_then(|e| e.event)
        {
            Some(Event::Progress(_)) => {}
            Some(Event::Result(result)) => return result,
            None => panic!("stream ended without a result"),
        }
    }
}

#[tokio::test]
async fn tcp_rr_every_request_completed_was_answered() {
    let (mut client, _) = daemon().await;
    let (c, s) = run(&mut client, "rr", spec(pb::RunKind::TcpRr, 300, 100, 200)).await;
    assert!(
        c.errors.is_empty() && s.errors.is_empty(),
        "{:?} {:?}",
        c.errors,
        s.errors
    );
    assert!(c.messages > 100, "only {} transactions", c.messages);
    assert_eq!(c.messages, s.messages);
    assert_eq!(c.bytes_sent, c.messages * 100);
    assert_eq!(c.bytes_received, c.messages * 200);
    assert_eq!(s.bytes_received, c.bytes_sent);
    assert!(!c.latency_histogram.is_empty());
    assert_eq!(c.connections, 1);
}

#[tokio::test]
async fn http_every_request_is_answered_on_keep_alive_and_fresh_connections() {
    let (mut client, _) = daemon().await;
    let mut keep_alive = spec(pb::RunKind::Http, 300, 1, 1000);
    keep_alive.parallel = 3;
    let (c, s) = run(&mut client, "http", keep_alive).await;
    assert!(
        c.errors.is_empty() && s.errors.is_empty(),
        "{:?} {:?}",
        c.errors,
        s.errors
    );
    assert!(c.messages > 100, "only {} requests", c.messages);
    assert_eq!(s.messages, c.messages);
    assert_eq!(c.bytes_received, c.messages * 1000);
    assert_eq!(c.connections, 3);
    let (c, s) = run(
        &mut client,
        "httpcrr",
        spec(pb::RunKind::HttpCrr, 300, 1, 10),
    )
    .await;
    assert!(c.messages > 10);
    assert_eq!(s.messages, c.messages);
    assert_eq!(c.connections, c.messages);
}

#[tokio::test]
async fn http_without_the_token_is_refused() {
    let (mut client, _) = daemon().await;
    let spec = spec(pb::RunKind::Http, 200, 1, 1);
    let prepared = prepare(&mut client, "http-token", spec.clone()).await;
    let mut wrong = prepared.token.clone();
    wrong[0] ^= 0xff;
    let c = start(&mut client, "http-token", spec, prepared.port, wrong).await;
    assert_eq!(c.messages, 0);
    assert!(c.errors.iter().any(|e| e.contains("403")), "{:?}", c.errors);
}

#[tokio::test]
async fn tcp_crr_opens_one_connection_per_transaction() {
    let (mut client, _) = daemon().await;
    let (c, s) = run(&mut client, "crr", spec(pb::RunKind::TcpCrr, 300, 10, 10)).await;
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.messages > 10, "only {} transactions", c.messages);
    assert_eq!(c.connections, c.messages);
    assert_eq!(s.messages, c.messages);
    assert_eq!(s.connections, c.messages);
}

#[tokio::test]
async fn tcp_stream_every_byte_sent_was_received() {
    let (mut client, _) = daemon().await;
    let (c, s) = run(
        &mut client,
        "stream",
        spec(pb::RunKind::TcpStream, 300, 64 * 1024, 0),
    )
    .await;
    assert!(
        c.errors.is_empty() && s.errors.is_empty(),
        "{:?} {:?}",
        c.errors,
        s.errors
    );
    assert!(c.bytes_sent > 1 << 20);
    assert_eq!(s.bytes_received, c.bytes_sent);
    assert_eq!(c.bytes_sent, c.messages * 64 * 1024);
}

#[tokio::test]
async fn plain_io_moves_the_same_bytes_and_says_how() {
    let (mut client, _) = daemon().await;
    let mut plain = spec(pb::RunKind::TcpStream, 300, 64 * 1024, 0);
    plain.plain_io = true;
    let (c, s) = run(&mut client, "plain", plain).await;
    assert_eq!(s.bytes_received, c.bytes_sent);
    assert_eq!((c.io_path.as_str(), s.io_path.as_str()), ("write", "read"));
    let (c, s) = run(
        &mut client,
        "fast",
        spec(pb::RunKind::TcpStream, 300, 64 * 1024, 0),
    )
    .await;
    assert_eq!(s.bytes_received, c.bytes_sent);
    assert_eq!(
        (c.io_path.as_str(), s.io_path.as_str()),
        ("sendfile", "splice")
    );
    let (c, s) = run(&mut client, "gso", spec(pb::RunKind::UdpStream, 300, 64, 0)).await;
    assert_eq!(c.io_path, "udp-gso");
    assert_eq!(s.io_path, "recvmmsg");
    assert!(s.udp_received > 0 && s.udp_received <= c.udp_sent);
}

#[tokio::test]
async fn tcp_stream_reverse_flows_server_to_client() {
    let (mut client, _) = daemon().await;
    let mut reverse = spec(pb::RunKind::TcpStream, 300, 64 * 1024, 0);
    reverse.direction = pb::Direction::ServerToClient as i32;
    let (c, s) = run(&mut client, "reverse", reverse).await;
    assert!(c.bytes_received > 1 << 20, "{c:?}");
    assert_eq!(c.bytes_sent, 0);
    assert!(s.bytes_sent >= c.bytes_received);
}

#[tokio::test]
async fn udp_stream_at_a_rate_sends_that_many_and_loopback_loses_none() {
    let (mut client, _) = daemon().await;
    let mut paced = spec(pb::RunKind::UdpStream, 500, 200, 0);
    paced.rate = 2000.0;
    let (c, s) = run(&mut client, "udp", paced).await;
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!((995..=1001).contains(&c.udp_sent), "sent {}", c.udp_sent);
    assert_eq!(s.udp_received, c.udp_sent, "loopback lost datagrams");
    assert_eq!(s.udp_reordered, 0);
    assert_eq!(s.bytes_received, c.udp_sent * 200);
}

#[tokio::test]
async fn udp_rr_answers_every_request() {
    let (mut client, _) = daemon().await;
    let (c, s) = run(&mut client, "udprr", spec(pb::RunKind::UdpRr, 300, 32, 64)).await;
    assert!(c.udp_sent > 100);
    assert_eq!(c.udp_timeouts, 0);
    assert_eq!(c.udp_received, c.udp_sent);
    assert_eq!(s.messages, c.udp_sent);
}

#[tokio::test]
async fn rate_mode_paces_transactions() {
    let (mut client, _) = daemon().await;
    let mut paced = spec(pb::RunKind::TcpRr, 500, 1, 1);
    paced.rate = 1000.0;
    let (c, _) = run(&mut client, "paced", paced).await;
    assert!(
        (495..=501).contains(&c.messages),
        "{} transactions at 1000/s for 0.5 s",
        c.messages
    );
}

#[tokio::test]
async fn a_wrong_token_gets_no_service() {
    let (mut client, _) = daemon().await;
    let spec = spec(pb::RunKind::TcpRr, 200, 1, 1);
    let prepared = prepare(&mut client, "token", spec.clone()).await;
    let mut wrong = prepared.token.clone();
    wrong[0] ^= 0xff;
    let c = start(&mut client, "token", spec, prepared.port, wrong).await;
    assert_eq!(c.messages, 0);
    assert!(!c.errors.is_empty());
    let s = client
        .finish_server(pb::FinishServerRequest {
            run_id: "token".to_owned(),
        })
        .await
        .expect("finish")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(s.messages, 0);
    assert!(
        s.errors.iter().any(|e| e.contains("token")),
        "{:?}",
        s.errors
    );
}

#[tokio::test]
async fn bad_requests_get_the_right_status_naming_the_field() {
    let (mut client, _) = daemon().await;
    let prepare_with = |spec: pb::RunSpec, run_id: &str, netns: &str| pb::PrepareServerRequest {
        trace: None,
        reservation_id: String::new(),
        run_id: run_id.to_owned(),
        spec: Some(spec),
        netns: netns.to_owned(),
        port: 0,
        lease_ms: 0,
        token: Vec::new(),
    };
    let cases = [
        (
            prepare_with(spec(pb::RunKind::TcpRr, 100, 0, 1), "a", ""),
            "spec.request_size",
        ),
        (
            prepare_with(spec(pb::RunKind::TcpRr, 0, 1, 1), "a", ""),
            "spec.duration_ms",
        ),
        (
            prepare_with(spec(pb::RunKind::Unspecified, 100, 1, 1), "a", ""),
            "spec.kind",
        ),
        (
            prepare_with(spec(pb::RunKind::TcpRr, 100, 1, 1), "a/b", ""),
            "run_id",
        ),
        (
            prepare_with(spec(pb::RunKind::TcpRr, 100, 1, 1), "a", "/etc/passwd"),
            "netns",
        ),
    ];
    for (request, field) in cases {
        let status = client.prepare_server(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = client
        .finish_server(pb::FinishServerRequest {
            run_id: "nope".to_owned(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn targets_outside_the_policy_are_refused_before_any_traffic() {
    let (mut client, _) = daemon().await;
    let status = client
        .start_client(pb::StartClientRequest {
            trace: None,
            reservation_id: String::new(),
            run_id: "far".to_owned(),
            spec: Some(spec(pb::RunKind::TcpStream, 100, 1024, 0)),
            netns: String::new(),
            target_ip: "192.0.2.1".to_owned(),
            target_port: 9,
            token: vec![0; 16],
            target_path: String::new(),
        })
        .await
        .expect_err("not allowed");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("192.0.2.1"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn intra_pod_clients_only_go_where_a_server_side_was_prepared() {
    let (mut client, _) = daemon().await;
    for path in ["/etc", "/run/sonde/runs/../../etc", ""] {
        let status = client
            .start_client(pb::StartClientRequest {
                trace: None,
                reservation_id: String::new(),
                run_id: "fs".to_owned(),
                spec: Some(spec(pb::RunKind::FsRr, 100, 1, 1)),
                netns: String::new(),
                target_ip: String::new(),
                target_port: 0,
                token: vec![0; 16],
                target_path: path.to_owned(),
            })
            .await
            .expect_err(path);
        assert_eq!(status.code(), Code::InvalidArgument, "{path}");
        assert!(
            status.message().starts_with("target_path"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_lease_ends_a_server_side_whose_controller_vanished() {
    let (mut client, runs) = daemon().await;
    let status = client
        .prepare_server(pb::PrepareServerRequest {
            trace: None,
            reservation_id: String::new(),
            run_id: "lease".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 100, 1, 1)),
            netns: String::new(),
            port: 0,
            lease_ms: 300,
            token: Vec::new(),
        })
        .await;
    assert!(status.is_ok());
    assert_eq!(runs.counts(), (1, 0));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(runs.counts(), (0, 0), "the lease did not expire");
    let status = client
        .finish_server(pb::FinishServerRequest {
            run_id: "lease".to_owned(),
        })
        .await
        .expect_err("reaped");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn cancel_and_a_vanished_controller_stop_a_client_side() {
    let (mut client, runs) = daemon().await;
    let long = spec(pb::RunKind::TcpRr, 60_000, 1, 1);
    let prepared = prepare(&mut client, "long", long.clone()).await;
    let request = |run_id: &str| pb::StartClientRequest {
        trace: None,
        reservation_id: String::new(),
        run_id: run_id.to_owned(),
        spec: Some(long.clone()),
        netns: String::new(),
        target_ip: "127.0.0.1".to_owned(),
        target_port: prepared.port,
        token: prepared.token.clone(),
        target_path: String::new(),
    };

    // Cancelled: the stream ends with a (partial) result well before the 60 s.
    let mut stream = client
        .start_client(request("long"))
        .await
        .expect("start")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = client
        .cancel_run(pb::CancelRunRequest {
            run_id: "long".to_owned(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.found);
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream
                .message()
                .await
                .expect("stream")
                .and_then(|e| e.event)
            {
                Some(Event::Result(result)) => return result,
                Some(Event::Progress(_)) => {}
                None => panic!("no result"),
            }
        }
    })
    .await
    .expect("the run stopped after CancelRun");
    assert!(ended.messages > 0);

    // Controller gone: dropping the stream stops the client side.
    let prepared2 = prepare(&mut client, "gone", long.clone()).await;
    let mut gone = request("gone");
    gone.target_port = prepared2.port;
    gone.token = prepared2.token;
    let stream = client.start_client(gone).await.expect("start").into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs.counts().1, 1);
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while runs.counts().1 != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client side outlived its controller"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn trace_requests_are_checked_field_by_field() {
    let (mut client, runs) = daemon().await;
    let flow = |client_ip: &str, protocol: &str| pb::TracedFlow {
        client_ip: client_ip.to_owned(),
        server_ip: "127.0.0.1".to_owned(),
        server_port: 0,
        protocol: protocol.to_owned(),
    };
    let tcp = || vec![flow("127.0.0.1", "tcp")];
    let cases = [
        (Vec::new(), "", 0, 0, "trace.flows"),
        (
            vec![flow("not-an-ip", "tcp")],
            "",
            0,
            0,
            "trace.flows.client_ip",
        ),
        (
            vec![flow("127.0.0.1", "sctp")],
            "",
            0,
            0,
            "trace.flows.protocol",
        ),
        (tcp(), "a/b", 0, 0, "trace.pod_interface"),
        (tcp(), "", 3, 0, "trace.sample_one_in"),
        (tcp(), "", 2048, 0, "trace.sample_one_in"),
        (tcp(), "", 1, 7, "trace.ways"),
    ];
    for (flows, pod_interface, sample_one_in, ways, field) in cases {
        let status = client
            .prepare_server(pb::PrepareServerRequest {
                run_id: "traced".to_owned(),
                spec: Some(spec(pb::RunKind::TcpRr, 100, 1, 1)),
                trace: Some(pb::TraceRequest {
                    flows,
                    pod_interface: pod_interface.to_owned(),
                    uplink_interface: String::new(),
                    sample_one_in,
                    uplink_toward: String::new(),
                    ways,
                    windowed: false,
                }),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    // The other side an uplink is looked up toward must be an address.
    let status = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: "traced".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 100, 1, 1)),
            trace: Some(pb::TraceRequest {
                flows: vec![flow("127.0.0.1", "tcp")],
                uplink_toward: "node2".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("uplink_toward");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("trace.uplink_toward"),
        "{}",
        status.message()
    );
    // A well-formed request to a daemon without tracing (this one has no eBPF) is refused as
    // such, and leaves no server side behind.
    let status = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: "traced".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 100, 1, 1)),
            trace: Some(pb::TraceRequest {
                flows: vec![flow("127.0.0.1", "tcp")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("no tracer");
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    assert_eq!(runs.counts(), (0, 0));
}

#[tokio::test]
async fn conntrack_watch_requests_are_checked() {
    let (mut client, _runs) = daemon().await;
    for interval_ms in [0, 99, 60_001] {
        let status = client
            .watch_conntrack(pb::WatchConntrackRequest {
                interval_ms,
                count: 1,
                census: false,
            })
            .await
            .expect_err("interval out of range");
        assert_eq!(status.code(), Code::InvalidArgument, "{interval_ms}");
        assert!(
            status
                .message()
                .starts_with("interval_ms: must be 100 to 60000"),
            "{}",
            status.message()
        );
    }
    // This daemon was made without a watcher: it says so instead of streaming nothing.
    let status = client
        .watch_conntrack(pb::WatchConntrackRequest {
            interval_ms: 1000,
            count: 1,
            census: false,
        })
        .await
        .expect_err("no watcher");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("conntrack cannot be read"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn reservations_are_checked_and_refuse_runs_of_others_naming_the_holder() {
    let (mut client, _runs) = daemon().await;
    let holder = |session: &str| pb::Holder {
        session: session.to_owned(),
        user: "alice@ctl".to_owned(),
        scenario: "mesh".to_owned(),
    };
    let reserve = |holder: Option<pb::Holder>, class: pb::ReservationClass, lease_ms: u64| {
        pb::ReserveRequest {
            holder,
            class: class as i32,
            lease_ms,
            purpose: "tcp-stream pod/a -> pod/b".to_owned(),
        }
    };
    for (request, field) in [
        (
            reserve(None, pb::ReservationClass::Exclusive, 1000),
            "holder",
        ),
        (
            reserve(Some(holder("")), pb::ReservationClass::Exclusive, 1000),
            "holder.session",
        ),
        (
            reserve(Some(holder("a")), pb::ReservationClass::Unspecified, 1000),
            "class",
        ),
        (
            reserve(Some(holder("a")), pb::ReservationClass::Exclusive, 0),
            "lease_ms",
        ),
    ] {
        let status = client.reserve(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let held = client
        .reserve(reserve(
            Some(holder("alice")),
            pb::ReservationClass::Exclusive,
            60_000,
        ))
        .await
        .expect("reserve")
        .into_inner();
    // Someone else's reservation, and a run under none, are refused with the holder named.
    let status = client
        .reserve(reserve(
            Some(holder("bob")),
            pb::ReservationClass::Normal,
            1000,
        ))
        .await
        .expect_err("held");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("alice@ctl"),
        "{}",
        status.message()
    );
    let status = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: "unreserved".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 200, 1, 1)),
            ..Default::default()
        })
        .await
        .expect_err("node held exclusive");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("scenario mesh"),
        "{}",
        status.message()
    );
    // A run naming a reservation the node does not hold is refused too.
    let status = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: "forged".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 200, 1, 1)),
            reservation_id: "rsv-0-0".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("not held");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("reservation_id"),
        "{}",
        status.message()
    );
    // Under the reservation it runs, and the daemon records when it held the node.
    let prepared = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: "reserved".to_owned(),
            spec: Some(spec(pb::RunKind::TcpRr, 200, 1, 1)),
            reservation_id: held.reservation_id.clone(),
            ..Default::default()
        })
        .await
        .expect("under the reservation")
        .into_inner();
    assert!(prepared.port > 0);
    client
        .cancel_run(pb::CancelRunRequest {
            run_id: "reserved".to_owned(),
        })
        .await
        .expect("cancel");
    let list = client
        .list_reservations(pb::ListReservationsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.held.len(), 1);
    assert_eq!(list.runs.len(), 1);
    let run = &list.runs[0];
    assert_eq!(
        run.holder.as_ref().map(|h| h.session.as_str()),
        Some("alice")
    );
    assert!(run.ended_at_unix_ms >= run.started_at_unix_ms && run.ended_at_unix_ms > 0);
    assert!(
        client
            .release(pb::ReleaseRequest {
                reservation_id: held.reservation_id,
            })
            .await
            .expect("release")
            .into_inner()
            .found
    );
}

#[tokio::test]
async fn dns_queries_are_answered_by_the_runs_own_responder() {
    let (mut client, _) = daemon().await;
    let mut dns = spec(pb::RunKind::Dns, 300, 64, 64);
    dns.dns_types = vec!["A".into(), "AAAA".into(), "SRV".into()];
    let (c, s) = run(&mut client, "dns", dns).await;
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.messages > 50, "only {} queries answered", c.messages);
    // Every query sent in the measured part was answered, without error; the responder
    // answered at least those (and the late ones of the warm-up edge).
    assert_eq!(c.udp_sent, c.udp_received);
    assert_eq!(c.udp_timeouts, 0);
    assert_eq!(c.dns_rcodes.get("NoError"), Some(&c.messages));
    assert_eq!(c.dns_rcodes.len(), 1, "{:?}", c.dns_rcodes);
    assert!(s.messages >= c.messages, "{} < {}", s.messages, c.messages);
}

#[tokio::test]
async fn dns_to_a_server_that_is_not_sondes_is_bounded_and_counts_timeouts_as_lost() {
    let (mut client, _) = daemon().await;
    // A port nothing listens on: every query times out.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let request = |spec: pb::RunSpec| pb::StartClientRequest {
        trace: None,
        reservation_id: String::new(),
        run_id: "external".to_owned(),
        spec: Some(spec),
        netns: String::new(),
        target_ip: "127.0.0.1".to_owned(),
        target_port: u32::from(closed),
        token: Vec::new(),
        target_path: String::new(),
    };
    let external = |rate: f64, name: &str| {
        let mut dns = spec(pb::RunKind::Dns, 1000, 64, 64);
        dns.rate = rate;
        dns.dns_name = name.to_owned();
        dns.parallel = 4;
        dns
    };
    // Refused: another kind without a token, no name, no pace, a pace above the cap.
    for (spec, wanted) in [
        (spec(pb::RunKind::UdpRr, 1000, 64, 64), "token"),
        (external(50.0, ""), "spec.dns_name"),
        (external(0.0, "web.example"), "at most 1000"),
        (external(5000.0, "web.example"), "at most 1000"),
    ] {
        let status = client
            .start_client(request(spec))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(wanted), "{}", status.message());
    }
    // Within the bounds: runs, and each unanswered query is lost.
    let mut stream = client
        .start_client(request(external(50.0, "web.example")))
        .await
        .expect("start")
        .into_inner();
    let result = loop {
        match stream
            .message()
            .await
            .expect("stream")
            .and_then(|e| e.event)
        {
            Some(Event::Result(result)) => break result,
            Some(Event::Progress(_)) => {}
            None => panic!("no result"),
        }
    };
    // One query at a time a flow: each flow's first timeout holds it past the 1 s window.
    assert!(result.udp_sent >= 4, "{}", result.udp_sent);
    assert_eq!(result.udp_received, 0);
    assert_eq!(result.udp_timeouts, result.udp_sent);
    assert!(result.dns_rcodes.is_empty());
}

/// Twice as many runs at once as the daemon allows: as many served as allowed, the others
/// refused naming the cap; a run's client side beside its server takes no second place; a run
/// longer than allowed is refused naming that cap; and every place comes back when its run
/// ends.
#[tokio::test]
async fn a_daemon_serves_its_most_runs_at_once_and_refuses_the_rest_naming_the_cap() {
    use sonde_daemon::runs::limits::Limits;
    let (client, runs) = daemon_with(Runs::with_limits(Limits {
        max_runs: 2,
        longest: Duration::from_secs(60),
        ..Limits::default()
    }))
    .await;
    let spec = spec(pb::RunKind::TcpRr, 300, 1, 1);
    let attempt = |run_id: &'static str| {
        let mut client = client.clone();
        let spec = spec.clone();
        async move {
            client
                .prepare_server(prepare_request(run_id, spec))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let (a, b, c, d) = tokio::join!(
        attempt("cap-a"),
        attempt("cap-b"),
        attempt("cap-c"),
        attempt("cap-d")
    );
    let mut served = Vec::new();
    let mut refused = 0;
    for (run_id, outcome) in [("cap-a", a), ("cap-b", b), ("cap-c", c), ("cap-d", d)] {
        match outcome {
            Ok(prepared) => served.push((run_id, prepared)),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("--max-runs 2"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((served.len(), refused), (2, 2));
    // A served run's client side, on the same daemon, runs: its run holds one place.
    let mut control = client.clone();
    let (run_id, prepared) = &served[0];
    let result = start(
        &mut control,
        run_id,
        spec.clone(),
        prepared.port,
        prepared.token.clone(),
    )
    .await;
    assert!(result.messages > 0, "{result:?}");
    // Longer than allowed.
    let mut long = spec.clone();
    long.duration_ms = 61_000;
    let status = control
        .prepare_server(prepare_request("cap-long", long))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("--max-run-seconds 60"),
        "{status:?}"
    );
    // Nothing held after the runs end; a new run finds its place.
    for (run_id, _) in &served {
        control
            .finish_server(pb::FinishServerRequest {
                run_id: (*run_id).to_owned(),
            })
            .await
            .expect("finish");
    }
    assert_eq!(runs.counts(), (0, 0));
    let _ = prepare(&mut control, "cap-e", spec.clone()).await;
    control
        .cancel_run(pb::CancelRunRequest {
            run_id: "cap-e".to_owned(),
        })
        .await
        .expect("cancel");
}

/// Starts a client side of `run_id` (prepared with `prepared`) and returns the daemon's
/// refusal, if it refuses.
async fn start_refused(
    client: &mut AgentClient<Channel>,
    run_id: &str,
    spec: pb::RunSpec,
    prepared: &pb::PrepareServerResponse,
) -> Option<tonic::Status> {
    client
        .start_client(start_request(
            run_id,
            spec,
            prepared.port,
            prepared.token.clone(),
        ))
        .await
        .err()
}

/// A daemon's budgets of generated load: a stream that spends the bytes of a minute is stopped
/// at its next progress, keeping what it measured and saying why; the next run is refused
/// naming the cap while the bucket is dry; a tcp-crr spending the connections of a minute is
/// stopped the same way; nothing is held after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stops_and_refuses_runs_once_its_budget_of_generated_load_is_spent() {
    use sonde_daemon::runs::limits::Limits;
    let (mut client, runs) = daemon_with(Runs::with_limits(Limits {
        bytes_per_minute: Some(50_000_000),
        ..Limits::default()
    }))
    .await;
    let stream = spec(pb::RunKind::TcpStream, 5000, 65536, 0);
    let (result, _server) = run(&mut client, "budget-stream", stream.clone()).await;
    assert!(
        result
            .errors
            .first()
            .is_some_and(|e| e.starts_with("stopped after")
                && e.contains("(--max-bytes-per-minute 50000000)")),
        "{:?}",
        result.errors
    );
    assert!(result.bytes_sent > 0, "what it measured is kept");
    assert!(
        result.measured_ns < 3_000_000_000,
        "stopped early: {} ns",
        result.measured_ns
    );
    let prepared = prepare(&mut client, "budget-next", stream.clone()).await;
    let status = start_refused(&mut client, "budget-next", stream, &prepared)
        .await
        .expect("refused while dry");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("its most bytes for now (--max-bytes-per-minute 50000000)"),
        "{status:?}"
    );
    client
        .cancel_run(pb::CancelRunRequest {
            run_id: "budget-next".to_owned(),
        })
        .await
        .expect("cancel");
    assert_eq!(runs.counts(), (0, 0));

    let (mut client, runs) = daemon_with(Runs::with_limits(Limits {
        connections_per_minute: Some(1_000),
        ..Limits::default()
    }))
    .await;
    let crr = spec(pb::RunKind::TcpCrr, 5000, 1, 1);
    let (result, _server) = run(&mut client, "budget-crr", crr).await;
    assert!(
        result
            .errors
            .first()
            .is_some_and(|e| e.contains("(--max-connections-per-minute 1000)")),
        "{:?}",
        result.errors
    );
    assert!(result.connections >= 1, "{result:?}");
    assert_eq!(runs.counts(), (0, 0));
}
