//! The `sonde.v1.Agent` service: a thin adapter that turns library results into messages.

use std::sync::Arc;

use sonde_proto::v1::{
    self as pb,
    agent_server::{Agent, AgentServer},
};
use tonic::{Request, Response, Status};

use crate::facts::{FactsSource, NodeFacts};

/// Serves `sonde.v1.Agent` from a [`FactsSource`].
#[derive(Debug)]
pub struct AgentService<S> {
    /// Shared with the rest of the daemon, which keeps the eBPF object alive.
    source: Arc<S>,
}

impl<S: FactsSource> AgentService<S> {
    /// The tonic server for `source`.
    pub fn server(source: Arc<S>) -> AgentServer<Self> {
        AgentServer::new(Self { source })
    }
}

#[tonic::async_trait]
impl<S: FactsSource> Agent for AgentService<S> {
    async fn get_node_facts(
        &self,
        _request: Request<pb::GetNodeFactsRequest>,
    ) -> Result<Response<pb::GetNodeFactsResponse>, Status> {
        let source = Arc::clone(&self.source);
        // Reading program info is a few syscalls under a mutex: keep it off the async workers.
        let facts = tokio::task::spawn_blocking(move || source.node_facts())
            .await
            .map_err(|err| Status::internal(format!("reading node facts: {err}")))?;
        Ok(Response::new(pb::GetNodeFactsResponse {
            facts: Some(facts.into()),
        }))
    }
}

impl From<NodeFacts> for pb::NodeFacts {
    fn from(facts: NodeFacts) -> Self {
        Self {
            node_name: facts.node_name,
            kernel_release: facts.kernel_release,
            daemon_version: facts.daemon_version,
            started_at_unix_ns: facts.started_at_unix_ns,
            pid: facts.pid,
            capabilities: facts
                .capabilities
                .into_iter()
                .map(|capability| pb::Capability {
                    name: capability.name.to_owned(),
                    available: capability.available,
                    detail: capability.detail,
                })
                .collect(),
            programs: facts
                .programs
                .into_iter()
                .map(|program| pb::LoadedProgram {
                    name: program.name,
                    program_type: program.program_type,
                    kernel_id: program.kernel_id,
                })
                .collect(),
        }
    }
}
