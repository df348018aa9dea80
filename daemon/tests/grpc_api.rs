//! The sonde.v1 API in process, over real TCP on loopback, with a fixed facts source so that it
//! needs no root: what the server says must be exactly what the library gave it.

use std::{sync::Arc, time::Duration};

use sonde_daemon::{
    capabilities::Capability,
    facts::{FactsSource, NodeFacts},
    grpc::AgentService,
    object::LoadedProgram,
    runs::{Runs, policy::TargetPolicy},
    server,
};
use sonde_proto::v1::{GetNodeFactsRequest, agent_client::AgentClient};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client};

struct Fixed(NodeFacts);

impl FactsSource for Fixed {
    fn node_facts(&self) -> NodeFacts {
        self.0.clone()
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        node_name: "node-a".to_owned(),
        kernel_release: "6.18.44".to_owned(),
        daemon_version: "0.1.0".to_owned(),
        started_at_unix_ns: 1_700_000_000_000_000_000,
        pid: 4242,
        capabilities: vec![
            Capability {
                name: "tcx",
                available: true,
                detail: "attached".to_owned(),
            },
            Capability {
                name: "fentry",
                available: false,
                detail: "load: Operation not permitted (os error 1)".to_owned(),
            },
        ],
        programs: vec![LoadedProgram {
            name: "sonde_tc_ingress".to_owned(),
            program_type: "sched_cls".to_owned(),
            kernel_id: 17,
        }],
        pod_interfaces: Vec::new(),
    }
}

#[tokio::test]
async fn facts_and_health_are_served_and_shutdown_drains() {
    let listener = server::Listener::bind(&"127.0.0.1:0".parse().expect("listen address"))
        .await
        .expect("bind loopback");
    let addr = listener.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = AgentService::new(
        Arc::new(Fixed(facts())),
        Arc::new(Runs::default()),
        TargetPolicy::default(),
    );
    let server = tokio::spawn(server::run(
        listener,
        server::Security::Plaintext,
        agent,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(2),
    ));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut agent = AgentClient::new(channel.clone());
    let answer = agent
        .get_node_facts(GetNodeFactsRequest {})
        .await
        .expect("GetNodeFacts")
        .into_inner()
        .facts
        .expect("facts present");
    assert_eq!(answer.node_name, "node-a");
    assert_eq!(answer.kernel_release, "6.18.44");
    assert_eq!(answer.pid, 4242);
    let capabilities: Vec<(&str, bool, &str)> = answer
        .capabilities
        .iter()
        .map(|c| (c.name.as_str(), c.available, c.detail.as_str()))
        .collect();
    assert_eq!(
        capabilities,
        [
            ("tcx", true, "attached"),
            (
                "fentry",
                false,
                "load: Operation not permitted (os error 1)"
            ),
        ]
    );
    assert_eq!(answer.programs.len(), 1);
    assert_eq!(answer.programs[0].name, "sonde_tc_ingress");
    assert_eq!(answer.programs[0].kernel_id, 17);

    let mut health = health_client::HealthClient::new(channel);
    for service in ["", "sonde.v1.Agent"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    stop_tx.send(()).expect("server still running");
    let stopped = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops within the drain deadline")
        .expect("server task did not panic");
    stopped.expect("server stopped cleanly");
}
