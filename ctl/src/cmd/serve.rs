//! `sondectl serve KIND --at ENDPOINT`: a server side held open for a client of the user's own
//! (curl, wrk, an application), e.g. to compare a reference tool with sonde's own client
//! against the same server code.
//!
//! Prints one JSON line with where it listens and the token to present (for HTTP, the header
//! line), serves for `--duration` (or until Ctrl-C), then prints what the server side
//! measured as a second JSON line.

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use sonde_proto::v1 as pb;

use crate::{
    agent,
    cli::{RunKindArg, parse_duration},
    endpoint::{self, EndpointRef},
    lab::Inventory,
};

/// Flags of `sondectl serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The generator whose server side to run.
    #[arg(value_enum)]
    pub kind: RunKindArg,

    /// Where: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub at: EndpointRef,

    /// How long to serve.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Response size (RR kinds and HTTP).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub size: Option<u64>,

    /// Connections it expects.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,

    /// The lab whose pods and nodes `--at` names.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// How long to wait for the daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `sondectl serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if matches!(args.at, EndpointRef::Service(_)) {
        anyhow::bail!("--at must be a pod, a node or a daemon, not a Service");
    }
    let lab = Inventory::load(&args.lab).ok();
    let destination = endpoint::resolve_destination(&args.at, lab.as_ref())?;
    let place = destination
        .servers
        .first()
        .context("the endpoint resolved to no server")?;
    let size = args.size.unwrap_or_else(|| args.kind.default_size());
    let spec = pb::RunSpec {
        kind: args.kind.proto() as i32,
        duration_ms: u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
        warmup_ms: 0,
        parallel: args.parallel,
        request_size: size,
        response_size: size,
        rate: 0.0,
        direction: pb::Direction::ClientToServer as i32,
        plain_io: false,
        dns_name: String::new(),
        dns_types: Vec::new(),
        interval_ms: 0,
    };
    let run_id = format!("serve-{}", std::process::id());
    let addr = place.agent.parse().map_err(anyhow::Error::msg)?;
    let mut client = agent::connect(&addr, args.timeout).await?;
    let prepared = client
        .prepare_server(pb::PrepareServerRequest {
            run_id: run_id.clone(),
            spec: Some(spec),
            netns: place.netns.clone(),
            port: 0,
            lease_ms: u64::try_from((args.duration + Duration::from_secs(30)).as_millis())
                .unwrap_or(u64::MAX),
            token: Vec::new(),
            trace: None,
            reservation_id: String::new(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!("{} refused: {}", place.agent, agent::status_text(&status))
        })?
        .into_inner();
    let token: String = prepared.token.iter().map(|b| format!("{b:02x}")).collect();
    let ready = serde_json::json!({
        "kind": args.kind.name(),
        "ip": destination.ip.to_string(),
        "port": prepared.port,
        "path": prepared.path,
        "token": token,
        "http_header": format!("x-sonde-token: {token}"),
    });
    println!("{ready}");
    std::io::stdout().flush()?;
    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let result = client
        .finish_server(pb::FinishServerRequest { run_id })
        .await
        .map_err(|status| anyhow::anyhow!("finishing: {}", agent::status_text(&status)))?
        .into_inner()
        .result
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "messages": result.messages,
            "bytes_sent": result.bytes_sent,
            "bytes_received": result.bytes_received,
            "connections": result.connections,
            "errors": result.errors,
        })
    );
    Ok(())
}
