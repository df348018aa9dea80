//! `dns`: DNS queries over UDP, each flow asking one at a time and waiting for its answer, and
//! sonde's own responder. Messages are built and parsed with hickory-proto.
//!
//! Against sonde's responder the name asked is the run's own (its token in a label under
//! `sonde.test.`, a name RFC 2606 keeps out of the real DNS), which the responder answers
//! with fixed documentation records; any other name gets REFUSED. Against a server that is
//! not sonde's, the run asks the name it was given. A query's ID is its flow's sequence
//! number (mod 2^16): an answer with another ID is a late answer to an earlier query, and the
//! kernel breakdown follows a query and its answer by that ID.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    str::FromStr as _,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, SRV},
    },
};

use super::{
    Target,
    flows::run_flows,
    generator::{ClientRun, Generator, Listen, Listener, ServerRun, addr_of, mismatch},
    io::Pacer,
    measure::{Counters, POLL, Stop, ThreadResult, Window},
    udp,
    wire::{self, Token},
};
use crate::runs::spec::{DnsType, RunSpec};

/// How long a query waits for its answer before it counts as lost (resolvers retry after a
/// few seconds; a second is already an outage for a service lookup).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The zone of the names sonde's responder answers.
const ZONE: &str = "sonde.test.";
/// The responder's answers: documentation addresses (RFC 5737, RFC 3849) and a port.
const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);
const ANSWER_PORT: u16 = 5201;
/// Time to live of the responder's records.
const TTL: u32 = 30;

/// `dns`.
#[derive(Debug)]
pub struct Dns;

impl Generator for Dns {
    fn listen(&self) -> Listen {
        Listen::Udp
    }

    fn serve(&self, listener: Listener, run: ServerRun) -> Vec<ThreadResult> {
        match listener {
            Listener::Udp(socket) => vec![serve(&socket, &run.token, &run.stop)],
            _ => mismatch("a listener that is not UDP"),
        }
    }

    fn client(&self, target: &Target, run: ClientRun<'_>) -> Vec<ThreadResult> {
        match addr_of(target) {
            Some(addr) => client(addr, run),
            None => mismatch("a path to send queries to"),
        }
    }
}

/// The name sonde's responder answers for the run of `token`.
pub fn run_name(token: &Token) -> Result<Name, String> {
    let label: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
    Name::from_str(&format!("t{label}.{ZONE}")).map_err(|err| err.to_string())
}

fn record_type(kind: DnsType) -> RecordType {
    match kind {
        DnsType::A => RecordType::A,
        DnsType::Aaaa => RecordType::AAAA,
        DnsType::Srv => RecordType::SRV,
    }
}

/// A query for `name` of type `kind`, with ID `id`, asking for recursion (a cluster's
/// resolver answers names it forwards).
fn query(id: u16, name: &Name, kind: DnsType) -> io::Result<Vec<u8>> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), record_type(kind)));
    message
        .to_vec()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))
}

/// The responder's answer to `request`: records for the run's name, REFUSED for any other;
/// `None` for what is not a query.
fn answer(request: &[u8], name: &Name) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    let Some(question) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(question.clone());
    // Names compare without regard to case, as DNS does.
    if question.name() != name {
        response.metadata.response_code = ResponseCode::Refused;
        return response.to_vec().ok();
    }
    let owner = question.name().clone();
    let data = match question.query_type() {
        RecordType::A => Some(RData::A(A(ANSWER_V4))),
        RecordType::AAAA => Some(RData::AAAA(AAAA(ANSWER_V6))),
        RecordType::SRV => Some(RData::SRV(SRV::new(0, 0, ANSWER_PORT, name.clone()))),
        _ => None,
    };
    if let Some(data) = data {
        response.add_answer(Record::from_rdata(owner, TTL, data));
    }
    response.to_vec().ok()
}

/// The responder: answers every query on `socket` until stopped.
fn serve(socket: &UdpSocket, token: &Token, stop: &Stop) -> ThreadResult {
    let mut result = ThreadResult::new();
    result.io("recv+send");
    let name = match run_name(token) {
        Ok(name) => name,
        Err(err) => {
            result.error(format!("the run's DNS name: {err}"));
            return result;
        }
    };
    if let Err(err) = socket.set_read_timeout(Some(POLL)) {
        result.error(format!("socket timeout: {err}"));
        return result;
    }
    let mut buf = vec![0_u8; 4096];
    let (mut first, mut last) = (None, None);
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(err) if wire::is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {
                continue;
            }
            Err(err) => {
                result.error(format!("receive: {err}"));
                break;
            }
        };
        let Some(response) = answer(&buf[..len], &name) else {
            continue;
        };
        match socket.send_to(&response, peer) {
            Ok(_) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                result.cpu_starts_if(true);
                result.messages += 1;
                result.bytes_received += len as u64;
                result.bytes_sent += response.len() as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(err) => result.error(format!("send: {err}")),
        }
    }
    if let (Some(first), Some(last)) = (first, last) {
        result.measured = last - first;
    }
    result.stop_cpu();
    result
}

/// The client side: `parallel` flows, each on its own socket, one query at a time.
fn client(target: SocketAddr, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let spec = run.spec;
    let name = match &spec.dns_name {
        Some(name) => Name::from_str(name).map_err(|err| err.to_string()),
        None => run_name(&run.token),
    };
    let name = match name {
        Ok(name) => name,
        Err(err) => return mismatch(&format!("a name it cannot ask: {err}")),
    };
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let (owned, counters, stop) = (spec.clone(), Arc::clone(run.counters), Arc::clone(run.stop));
    run_flows(
        spec,
        run.netns,
        spec.parallel,
        // A DNS server answers from the address it was asked at: a connected socket.
        move |_| {
            udp::connected(target, Duration::from_millis(20))
                .map_err(|err| format!("flow to {target}: {err}"))
        },
        move |socket, window, result| {
            ask(
                &socket, &owned, &name, window, rate, &stop, &counters, result,
            );
            result.measured = window.end - window.measure_from;
        },
    )
}

/// One flow: a query, its answer (or its timeout), the next.
#[expect(
    clippy::too_many_arguments,
    reason = "one flow's whole context, passed once"
)]
fn ask(
    socket: &UdpSocket,
    spec: &RunSpec,
    name: &Name,
    window: Window,
    rate: Option<f64>,
    stop: &Stop,
    counters: &Counters,
    result: &mut ThreadResult,
) {
    result.io("send+recv");
    let mut buf = vec![0_u8; 4096];
    let mut pacer = Pacer::new(rate, window.start);
    let mut seq = 0_u64;
    result.follow(counters, &window);
    while !stop.load(Ordering::Relaxed) {
        let intended = pacer.wait_turn();
        // A flow asks one query at a time: after a lost one held it for the timeout, the
        // queries it could not send then are not sent late past the window's end.
        if intended >= window.end || Instant::now() >= window.end {
            break;
        }
        let measuring = window.measuring(intended);
        result.cpu_starts_if(measuring);
        let id = (seq & 0xffff) as u16;
        let kind = spec.dns_types[(seq as usize) % spec.dns_types.len().max(1)];
        let request = match query(id, name, kind) {
            Ok(request) => request,
            Err(err) => {
                result.error(format!("query: {err}"));
                break;
            }
        };
        if let Err(err) = socket.send(&request)
            && err.kind() != io::ErrorKind::ConnectionRefused
        {
            result.error(format!("send: {err}"));
        }
        let deadline = Instant::now() + QUERY_TIMEOUT;
        let answered = udp::await_answer(socket, &mut buf, deadline, stop, |datagram| {
            Message::from_vec(datagram)
                .ok()
                .filter(|response| {
                    response.metadata.id == id
                        && response.metadata.message_type == MessageType::Response
                })
                .map(|response| response.metadata.response_code)
        })
        .unwrap_or_else(|err| {
            result.error(format!("receive: {err}"));
            None
        });
        if let Some((_, len, _)) = answered {
            counters.add((request.len() + len) as u64, 1);
        }
        if measuring {
            result.udp.sent += 1;
            result.counted(intended, request.len() as u64, 0, 0);
            match answered {
                Some((done, len, rcode)) => {
                    result.record_at(intended, done - intended);
                    result.counted(intended, 0, len as u64, 1);
                    result.udp.received += 1;
                    *result.dns_rcodes.entry(format!("{rcode:?}")).or_default() += 1;
                }
                None => {
                    result.udp.timeouts += 1;
                    result.missed_at(intended);
                }
            }
        }
        seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_responder_answers_the_runs_name_and_refuses_others() {
        let token = [7_u8; 16];
        let name = run_name(&token).expect("name");
        assert!(name.to_ascii().ends_with(".sonde.test."), "{name}");
        for kind in [DnsType::A, DnsType::Aaaa, DnsType::Srv] {
            let request = query(42, &name, kind).expect("query");
            let response = Message::from_vec(&answer(&request, &name).expect("answer"))
                .expect("a DNS message");
            assert_eq!(response.metadata.id, 42);
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert_eq!(response.answers.len(), 1, "{kind:?}");
            assert_eq!(response.answers[0].record_type(), record_type(kind));
        }
        let other = Name::from_str("example.com.").expect("name");
        let request = query(7, &other, DnsType::A).expect("query");
        let response =
            Message::from_vec(&answer(&request, &name).expect("answer")).expect("a DNS message");
        assert_eq!(response.metadata.response_code, ResponseCode::Refused);
        assert!(response.answers.is_empty());
        // Not a query: no answer.
        assert!(answer(b"not dns", &name).is_none());
    }
}
