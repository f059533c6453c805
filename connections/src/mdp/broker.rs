//! The Majordomo broker's state machine: messages and clock ticks in, messages out. No
//! sockets and no clock of its own (every call is given `now`), so every rule is unit-tested
//! here; [`super::server`] runs it on a ROUTER socket.
//!
//! The rules (MDP 0.2, spec 18):
//! - a client's REQUEST is queued on its service; each service hands its requests, oldest
//!   first, to its least recently used idle worker (the one idle longest);
//! - a worker's READY registers it for one service; PARTIAL replies are forwarded to the
//!   client, FINAL too, and then the worker is idle again (at the back of the line);
//! - any command from a worker counts as a heartbeat; a worker silent for `liveness`
//!   heartbeat intervals is dropped. So is one whose socket is gone, or that sends DISCONNECT.
//!   A dropped worker's request goes back to the front of its service's queue for the next
//!   worker (MDP workers are idempotent), unless PARTIAL replies had already reached the
//!   client: then the client is told `503` rather than given the partials twice;
//! - the broker heartbeats every worker it has sent nothing else to for an interval;
//! - a valid command that is unexpected (a second READY, a reply to a request the worker does
//!   not hold, a HEARTBEAT from a worker that never said READY, as after a broker restart) is
//!   answered with DISCONNECT and the worker forgotten: a worker reconnects and registers
//!   again on DISCONNECT, so a restarted broker gets its workers back within a heartbeat;
//! - malformed messages are counted, logged (rate-limited) and dropped; a registered worker
//!   that sends one is dropped too ("treating that peer as invalid");
//! - `mmi.service` answers `200` when the service named in the body has a worker, else `404`;
//!   other `mmi.` services answer `501`;
//! - bounded: at most `max_queued_per_service` requests wait per service and
//!   `max_queued_total` in all, and at most `max_services` names are tracked; past that a
//!   request is refused with `503`. A request no worker took within `request_timeout` is
//!   answered `504` (the spec asks that requests for services nobody serves expire).
//!
//! A refusal goes to a framework requester as a framework error reply (`unavailable` or
//! `timeout`, its workflow id echoed), recognised by its body being one frame holding a
//! request envelope; any other client gets a FINAL with body `[code, reason]` (see
//! [`BrokerStatus`]).
//!
//! Front-end clients: a plain REQ or DEALER peer (a Python `service_framework` requester)
//! that knows nothing of MDP reaches one service through a front-end endpoint bound for it.
//! The socket loop hands its requests to [`on_frontend_request`](BrokerCore::on_frontend_request)
//! with the frames to echo; the core gives the request a client address of its own (which
//! the worker sees and echoes, as any MDP client address) and queues it exactly as an MDP
//! client's request: the same caps, timeout and refusals. The worker's FINAL body goes back
//! through [`pop_frontend_out`](BrokerCore::pop_frontend_out) behind the echoed frames;
//! PARTIAL replies are dropped (a REQ takes one reply); every refusal is a framework error
//! reply, whatever the body was.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sf_zmtp::Message;

use super::proto::{self, BrokerStatus, ToBroker};
use crate::logline::{escape, WARNINGS};
use crate::stats::{Counter, Stats};
use crate::wire::{ErrorCode, WireError};

/// Tuning of a broker. The defaults follow the Guide's Majordomo: a heartbeat every 2.5 s,
/// a worker dropped after 3 missed ones (7.5 s).
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// How often the broker heartbeats its workers, and how often they are expected to
    /// (default 2.5 s). Workers must use the same interval.
    pub heartbeat_interval: Duration,
    /// Intervals a worker may stay silent before it is dropped (default 3).
    pub liveness: u32,
    /// Requests waiting per service (default 1,000); past it requests are refused `503`.
    pub max_queued_per_service: usize,
    /// Requests waiting over all services (default 100,000).
    pub max_queued_total: usize,
    /// Service names tracked at once (default 10,000).
    pub max_services: usize,
    /// A request no worker took within this is answered `504` (default 30 s).
    pub request_timeout: Duration,
    /// NULL (default) or CURVE (as server) for every connection.
    pub security: sf_zmtp::Security,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            heartbeat_interval: Duration::from_millis(2500),
            liveness: 3,
            max_queued_per_service: 1000,
            max_queued_total: 100_000,
            max_services: 10_000,
            request_timeout: Duration::from_secs(30),
            security: sf_zmtp::Security::Null,
        }
    }
}

impl BrokerOptions {
    /// How long a worker may stay silent.
    pub fn worker_timeout(&self) -> Duration {
        self.heartbeat_interval * self.liveness.max(1)
    }

    /// How often the clock should tick the state machine.
    pub fn tick(&self) -> Duration {
        (self.heartbeat_interval / 4).max(Duration::from_millis(5))
    }
}

/// A front-end client's pending request: which front-end, and the frames to echo.
#[derive(Debug)]
struct Front {
    frontend: usize,
    routing: Vec<Bytes>,
}

#[derive(Debug)]
struct Job {
    client: Bytes,
    body: Vec<Bytes>,
    since: Instant,
    partials: bool,
}

#[derive(Debug)]
struct Worker {
    service: String,
    expires: Instant,
    heartbeat_at: Instant,
    job: Option<Job>,
}

#[derive(Debug, Default)]
struct Service {
    queue: VecDeque<Job>,
    /// Idle workers, least recently used first.
    idle: VecDeque<Bytes>,
    workers: usize,
}

/// The broker's state. Feed it with [`on_message`](Self::on_message),
/// [`on_tick`](Self::on_tick) and [`on_unroutable`](Self::on_unroutable); send what
/// [`pop_out`](Self::pop_out) gives (each message's first frame is the routing id).
#[derive(Debug)]
pub struct BrokerCore {
    options: BrokerOptions,
    workers: HashMap<Bytes, Worker>,
    services: HashMap<String, Service>,
    queued: usize,
    out: VecDeque<Message>,
    stats: Arc<Stats>,
    workers_expired: u64,
    /// Front-end requests waiting or in hand, by the client address the core gave them.
    fronts: HashMap<Bytes, Front>,
    next_front: u64,
    front_out: VecDeque<(usize, Message)>,
}

fn routed(to: &Bytes, m: Message) -> Message {
    let mut m = m;
    m.push_front(to.clone());
    m
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl BrokerCore {
    /// An empty broker.
    pub fn new(options: BrokerOptions) -> BrokerCore {
        BrokerCore {
            options,
            workers: HashMap::new(),
            services: HashMap::new(),
            queued: 0,
            out: VecDeque::new(),
            stats: Arc::new(Stats::default()),
            workers_expired: 0,
            fronts: HashMap::new(),
            next_front: 0,
            front_out: VecDeque::new(),
        }
    }

    /// The counters: `received` requests from clients, `replied` FINALs forwarded,
    /// `malformed` messages dropped (and unexpected commands), `refused` requests (queues
    /// full), `timeouts` requests no worker took in time, `retries` requests given to another
    /// worker after theirs was lost.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The options.
    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    /// The next message to send, routing id first.
    pub fn pop_out(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// The next reply for a front-end client: the front-end's index (as given to
    /// [`on_frontend_request`](Self::on_frontend_request)) and the message, the peer's
    /// routing frames first.
    pub fn pop_frontend_out(&mut self) -> Option<(usize, Message)> {
        self.front_out.pop_front()
    }

    /// Front-end requests waiting or being served.
    pub fn frontend_pending(&self) -> usize {
        self.fronts.len()
    }

    /// A request from a front-end client: `routing` is every frame before the body (the
    /// peer's routing id first, then any envelope such as a REQ's empty delimiter), echoed
    /// on the reply; `body` the request. Queued for `service` as an MDP client's request.
    pub fn on_frontend_request(
        &mut self,
        now: Instant,
        frontend: usize,
        service: &str,
        routing: Vec<Bytes>,
        body: Bytes,
    ) {
        // An address no ROUTER gives a peer: a zero byte (reserved by ZMTP for generated
        // ids, which are 5 bytes long), a tag, the front-end and a counter.
        let mut id = Vec::with_capacity(14);
        id.push(0u8);
        id.push(b'F');
        id.extend_from_slice(&(frontend as u32).to_be_bytes());
        id.extend_from_slice(&self.next_front.to_be_bytes());
        self.next_front = self.next_front.wrapping_add(1);
        let id = Bytes::from(id);
        self.fronts.insert(id.clone(), Front { frontend, routing });
        self.on_request(now, id, service.to_owned(), vec![body]);
    }

    /// Registered workers, all services.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Registered workers of `service`.
    pub fn workers_of(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.workers)
    }

    /// Requests waiting for a worker, all services.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Workers dropped for missed heartbeats so far.
    pub fn workers_expired(&self) -> u64 {
        self.workers_expired
    }

    /// One message from the ROUTER: `[routing id, frames...]`.
    pub fn on_message(&mut self, now: Instant, msg: Message) {
        let mut frames = msg.into_frames();
        if frames.is_empty() {
            return;
        }
        let id = frames.remove(0);
        let cmd = match proto::parse_to_broker(&frames) {
            Ok(c) => c,
            Err(e) => {
                self.stats.bump(Counter::Malformed);
                let peer = hex(&id);
                if let Some(suppressed) = WARNINGS.allow("mdp_malformed", &peer) {
                    tracing::warn!(peer, suppressed, "broker dropped a malformed message: {e}");
                }
                if self.workers.contains_key(&id) {
                    self.drop_worker(now, &id, true, "it sent a malformed message");
                }
                return;
            }
        };
        if !cmd.from_worker() {
            if let ToBroker::Request { service, body } = cmd {
                self.on_request(now, id, service, body);
            }
            return;
        }
        let known = match self.workers.get_mut(&id) {
            Some(w) => {
                // Any command from a worker is a heartbeat.
                w.expires = now + self.options.worker_timeout();
                true
            }
            None => false,
        };
        match cmd {
            ToBroker::Ready { service } if !known => self.on_ready(now, id, service),
            ToBroker::Disconnect => {
                if known {
                    self.drop_worker(now, &id, false, "it disconnected");
                }
            }
            ToBroker::Heartbeat if known => {}
            ToBroker::Reply { last, client, body } if known => {
                self.on_reply(now, id, last, client, body)
            }
            other => {
                // Valid, but not now: a second READY, or a command from a worker this broker
                // does not know (it registered with a broker that has since restarted).
                self.unexpected(now, &id, other.name(), known);
            }
        }
    }

    /// A message to `id` could not be sent (the peer is gone, or its queue is full): a
    /// worker is dropped and its request goes to the next one; a client is ignored.
    pub fn on_unroutable(&mut self, now: Instant, id: &Bytes) {
        if self.workers.contains_key(id) {
            self.drop_worker(now, id, false, "its connection is gone");
        }
    }

    /// The clock: drops silent workers, heartbeats the others, expires requests nobody took.
    pub fn on_tick(&mut self, now: Instant) {
        let silent: Vec<Bytes> = self
            .workers
            .iter()
            .filter(|(_, w)| w.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            self.workers_expired += 1;
            // A worker taken for dead is sent nothing more (spec: stop sending it messages);
            // if it was only slow, its next command is answered DISCONNECT and it registers
            // again.
            self.drop_worker(now, &id, false, "it missed its heartbeats");
        }
        let interval = self.options.heartbeat_interval;
        for (id, w) in &mut self.workers {
            if w.heartbeat_at <= now {
                w.heartbeat_at = now + interval;
                self.out.push_back(routed(id, proto::heartbeat()));
            }
        }
        let timeout = self.options.request_timeout;
        let mut expired = Vec::new();
        for (name, svc) in &mut self.services {
            if svc
                .queue
                .iter()
                .any(|j| now.duration_since(j.since) >= timeout)
            {
                let (old, keep): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut svc.queue)
                    .into_iter()
                    .partition(|j| now.duration_since(j.since) >= timeout);
                svc.queue = keep;
                self.queued -= old.len();
                expired.extend(old.into_iter().map(|j| (name.clone(), j, svc.workers)));
            }
        }
        for (service, job, workers) in expired {
            self.stats.bump(Counter::Timeouts);
            let why = if workers == 0 {
                format!("no worker for service {service:?} registered within {timeout:?}")
            } else {
                format!("no worker of service {service:?} was free within {timeout:?}")
            };
            self.refuse(&service, job, BrokerStatus::Timeout, &why);
        }
        self.services
            .retain(|_, s| s.workers > 0 || !s.queue.is_empty());
    }

    /// Sends DISCONNECT to every worker and forgets them (the broker is stopping: they
    /// reconnect on new sockets and register with whatever broker comes back).
    pub fn disconnect_all(&mut self) {
        for id in self.workers.keys() {
            self.out.push_back(routed(id, proto::disconnect()));
        }
        self.workers.clear();
        for s in self.services.values_mut() {
            s.idle.clear();
            s.workers = 0;
        }
    }

    fn on_request(&mut self, now: Instant, client: Bytes, service: String, body: Vec<Bytes>) {
        self.stats.bump(Counter::Received);
        if let Some(query) = service.strip_prefix("mmi.") {
            let status = match query {
                "service" => {
                    let asked = body
                        .first()
                        .map(|b| String::from_utf8_lossy(b).into_owned());
                    if asked.is_some_and(|s| self.workers_of(&s) > 0) {
                        BrokerStatus::Ok
                    } else {
                        BrokerStatus::NotFound
                    }
                }
                _ => BrokerStatus::NotImplemented,
            };
            self.stats.bump(Counter::Replied);
            self.reply_to_client(
                &client,
                true,
                &service,
                vec![Bytes::from_static(status.code().as_bytes())],
            );
            return;
        }
        let job = Job {
            client,
            body,
            since: now,
            partials: false,
        };
        let known = self.services.contains_key(&service);
        let full = match self.services.get(&service) {
            _ if self.queued >= self.options.max_queued_total => Some(format!(
                "the broker holds {} waiting requests, its limit",
                self.queued
            )),
            None if self.services.len() >= self.options.max_services => Some(format!(
                "the broker tracks {} services, its limit",
                self.services.len()
            )),
            Some(s) if s.queue.len() >= self.options.max_queued_per_service => Some(format!(
                "{} requests for service {service:?} are waiting, its limit",
                s.queue.len()
            )),
            _ => None,
        };
        if let Some(why) = full {
            self.stats.bump(Counter::Refused);
            if let Some(suppressed) = WARNINGS.allow("mdp_queue_full", &service) {
                tracing::warn!(
                    service = escape(&service),
                    suppressed,
                    "broker refused a request: {why}"
                );
            }
            self.refuse(&service, job, BrokerStatus::Unavailable, &why);
            return;
        }
        if !known {
            tracing::debug!(
                service = escape(&service),
                "requests queued for a new service"
            );
        }
        self.services
            .entry(service.clone())
            .or_default()
            .queue
            .push_back(job);
        self.queued += 1;
        self.dispatch(now, &service);
    }

    fn on_ready(&mut self, now: Instant, id: Bytes, service: String) {
        if service.starts_with("mmi.") {
            self.unexpected(now, &id, "READY for an mmi. service", false);
            return;
        }
        if !self.services.contains_key(&service) && self.services.len() >= self.options.max_services
        {
            self.unexpected(now, &id, "READY past the service limit", false);
            return;
        }
        tracing::info!(
            service = escape(&service),
            worker = hex(&id),
            "worker registered"
        );
        self.workers.insert(
            id.clone(),
            Worker {
                service: service.clone(),
                expires: now + self.options.worker_timeout(),
                heartbeat_at: now + self.options.heartbeat_interval,
                job: None,
            },
        );
        let svc = self.services.entry(service.clone()).or_default();
        svc.workers += 1;
        svc.idle.push_back(id);
        self.dispatch(now, &service);
    }

    fn on_reply(&mut self, now: Instant, id: Bytes, last: bool, client: Bytes, body: Vec<Bytes>) {
        let holds = self
            .workers
            .get(&id)
            .and_then(|w| w.job.as_ref())
            .is_some_and(|j| j.client == client);
        if !holds {
            self.unexpected(now, &id, "a reply to a request it does not hold", true);
            return;
        }
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let service = w.service.clone();
        if last {
            w.job = None;
        } else if let Some(job) = w.job.as_mut() {
            job.partials = true;
        }
        self.reply_to_client(&client, last, &service, body);
        if !last {
            return;
        }
        self.stats.bump(Counter::Replied);
        if let Some(svc) = self.services.get_mut(&service) {
            svc.idle.push_back(id);
        }
        self.dispatch(now, &service);
    }

    fn unexpected(&mut self, now: Instant, id: &Bytes, what: &str, known: bool) {
        self.stats.bump(Counter::Malformed);
        let peer = hex(id);
        if let Some(suppressed) = WARNINGS.allow("mdp_unexpected", &peer) {
            tracing::info!(
                peer,
                suppressed,
                "broker: unexpected {what}; answering DISCONNECT"
            );
        }
        if known {
            self.drop_worker(now, id, true, "it sent an unexpected command");
        } else {
            self.out.push_back(routed(id, proto::disconnect()));
        }
    }

    fn drop_worker(&mut self, now: Instant, id: &Bytes, tell: bool, why: &str) {
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        tracing::info!(
            service = escape(&w.service),
            worker = hex(id),
            "worker dropped: {why}"
        );
        if tell {
            self.out.push_back(routed(id, proto::disconnect()));
        }
        if let Some(svc) = self.services.get_mut(&w.service) {
            svc.workers -= 1;
            svc.idle.retain(|i| i != id);
        }
        if let Some(mut job) = w.job {
            if job.partials {
                self.refuse(
                    &w.service,
                    job,
                    BrokerStatus::Unavailable,
                    "the worker was lost after sending partial replies",
                );
            } else {
                self.stats.bump(Counter::Retries);
                job.since = now;
                self.services
                    .entry(w.service.clone())
                    .or_default()
                    .queue
                    .push_front(job);
                self.queued += 1;
                self.dispatch(now, &w.service);
            }
        }
    }

    fn dispatch(&mut self, now: Instant, service: &str) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        while !svc.queue.is_empty() {
            let Some(id) = svc.idle.pop_front() else {
                break;
            };
            let Some(w) = self.workers.get_mut(&id).filter(|w| w.job.is_none()) else {
                continue;
            };
            let Some(job) = svc.queue.pop_front() else {
                break;
            };
            self.queued -= 1;
            self.out.push_back(routed(
                &id,
                proto::worker_request(job.client.clone(), job.body.iter().cloned()),
            ));
            w.heartbeat_at = now + self.options.heartbeat_interval;
            w.job = Some(job);
        }
    }

    /// Answers a request the broker will not serve.
    fn refuse(&mut self, service: &str, job: Job, status: BrokerStatus, why: &str) {
        let front = self.fronts.contains_key(&job.client);
        // A framework request: its last frame is a request envelope, and the frames before
        // it (a framework requester's request id) are a tag echoed ahead of the reply, as a
        // framework worker echoes it.
        let framework = match job.body.split_last() {
            Some((last, tag)) if tag.len() <= super::worker::MAX_TAG_FRAMES => {
                let (wf, is_request) = crate::wire::salvage_workflow_id(last);
                if is_request {
                    Some((wf, tag.to_vec()))
                } else {
                    front.then_some((wf, Vec::new()))
                }
            }
            _ => front.then_some((crate::wire::WorkflowId::None, Vec::new())),
        };
        let body = match framework {
            Some((workflow_id, mut tag)) => {
                let code = match status {
                    BrokerStatus::Timeout => ErrorCode::Timeout,
                    _ => ErrorCode::Unavailable,
                };
                tag.push(Bytes::from(crate::handler::error_reply(
                    workflow_id,
                    WireError::new(code, format!("broker: {why}")),
                )));
                tag
            }
            None => vec![
                Bytes::from_static(status.code().as_bytes()),
                Bytes::from(why.to_owned()),
            ],
        };
        self.reply_to_client(&job.client, true, service, body);
    }

    /// A reply to a client: an MDP client gets the PARTIAL or FINAL command; a front-end
    /// client gets the FINAL's body behind its routing frames, and nothing for a PARTIAL.
    fn reply_to_client(&mut self, client: &Bytes, last: bool, service: &str, body: Vec<Bytes>) {
        if !self.fronts.contains_key(client) {
            self.out
                .push_back(routed(client, proto::client_reply(last, service, body)));
            return;
        }
        if !last {
            return;
        }
        if let Some(front) = self.fronts.remove(client) {
            let mut frames = front.routing;
            frames.extend(body);
            self.front_out
                .push_back((front.frontend, Message::from(frames)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdp::proto::{parse_client_reply, parse_to_worker, ToWorker};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn from(id: &str, mut m: Message) -> Message {
        m.push_front(b(id));
        m
    }

    fn opts() -> BrokerOptions {
        BrokerOptions {
            heartbeat_interval: Duration::from_millis(100),
            liveness: 3,
            max_queued_per_service: 2,
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// Everything sent, as (to, frames after the id).
    fn drain(core: &mut BrokerCore) -> Vec<(String, Vec<Bytes>)> {
        let mut v = Vec::new();
        while let Some(m) = core.pop_out() {
            let mut f = m.into_frames();
            let to = String::from_utf8_lossy(&f.remove(0)).into_owned();
            v.push((to, f));
        }
        v
    }

    fn request(core: &mut BrokerCore, now: Instant, client: &str, service: &str, body: &str) {
        core.on_message(now, from(client, proto::client_request(service, [b(body)])));
    }

    fn ready(core: &mut BrokerCore, now: Instant, worker: &str, service: &str) {
        core.on_message(now, from(worker, proto::worker_ready(service)));
    }

    fn final_(core: &mut BrokerCore, now: Instant, worker: &str, client: &str, body: &str) {
        core.on_message(
            now,
            from(worker, proto::worker_reply(true, b(client), [b(body)])),
        );
    }

    fn as_request(frames: &[Bytes]) -> (String, Vec<Bytes>) {
        match parse_to_worker(frames).unwrap() {
            ToWorker::Request { client, body } => {
                (String::from_utf8_lossy(&client).into_owned(), body)
            }
            other => panic!("expected a REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn a_request_goes_to_a_worker_and_its_replies_back_to_the_client() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        request(&mut core, t, "c1", "echo", "hi");
        assert!(drain(&mut core).is_empty(), "queued until a worker comes");
        assert_eq!(core.queued(), 1);
        ready(&mut core, t, "w1", "echo");
        let out = drain(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "w1");
        assert_eq!(as_request(&out[0].1), ("c1".into(), vec![b("hi")]));
        core.on_message(
            t,
            from("w1", proto::worker_reply(false, b("c1"), [b("p1")])),
        );
        final_(&mut core, t, "w1", "c1", "done");
        let out = drain(&mut core);
        let replies: Vec<_> = out
            .iter()
            .map(|(to, f)| (to.clone(), parse_client_reply(f).unwrap()))
            .collect();
        assert_eq!(replies.len(), 2);
        assert!(replies
            .iter()
            .all(|(to, r)| to == "c1" && r.service == "echo"));
        assert!(!replies[0].1.last && replies[0].1.body == vec![b("p1")]);
        assert!(replies[1].1.last && replies[1].1.body == vec![b("done")]);
        assert_eq!(core.stats().get(Counter::Replied), 1);
    }

    #[test]
    fn the_least_recently_used_worker_gets_the_next_request() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        for w in ["w1", "w2", "w3"] {
            ready(&mut core, t, w, "s");
        }
        let mut order = Vec::new();
        for i in 0..6 {
            let c = format!("c{i}");
            request(&mut core, t, &c, "s", "x");
            let out = drain(&mut core);
            assert_eq!(out.len(), 1);
            order.push(out[0].0.clone());
            final_(&mut core, t, &out[0].0, &c, "y");
            drain(&mut core);
        }
        assert_eq!(order, ["w1", "w2", "w3", "w1", "w2", "w3"]);
    }

    #[test]
    fn a_silent_worker_is_dropped_and_its_request_goes_to_the_next() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "s");
        request(&mut core, t, "c1", "s", "job");
        assert_eq!(drain(&mut core)[0].0, "w1");
        // w2 registers later and keeps heartbeating; w1 goes silent.
        let t2 = t + Duration::from_millis(150);
        ready(&mut core, t2, "w2", "s");
        for step in 1..=5 {
            let now = t2 + Duration::from_millis(60 * step);
            core.on_message(now, from("w2", proto::heartbeat()));
            core.on_tick(now);
        }
        assert_eq!(core.workers_expired(), 1);
        assert_eq!(core.worker_count(), 1);
        let out = drain(&mut core);
        let to_w2: Vec<_> = out
            .iter()
            .filter(|(to, f)| to == "w2" && f[1].as_ref() == [proto::worker_cmd::REQUEST])
            .collect();
        assert_eq!(to_w2.len(), 1, "{out:?}");
        assert_eq!(as_request(&to_w2[0].1).0, "c1");
        for step in 6..=10 {
            let now = t2 + Duration::from_millis(60 * step);
            core.on_message(now, from("w2", proto::heartbeat()));
            core.on_tick(now);
        }
        let later = drain(&mut core);
        assert!(
            later.iter().all(|(to, _)| to != "w1"),
            "nothing more to a dead worker"
        );
        assert!(
            later.iter().any(|(to, _)| to == "w2"),
            "w2 is still heartbeated"
        );
        assert_eq!(core.stats().get(Counter::Retries), 1);
    }

    #[test]
    fn heartbeats_go_to_idle_workers_every_interval() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "s");
        core.on_tick(t + Duration::from_millis(50));
        assert!(drain(&mut core).is_empty());
        core.on_tick(t + Duration::from_millis(100));
        let out = drain(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, proto::heartbeat().into_frames());
    }

    #[test]
    fn unexpected_commands_get_disconnect() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        // A heartbeat from a worker this broker never saw (it restarted): DISCONNECT.
        core.on_message(t, from("old", proto::heartbeat()));
        assert_eq!(
            drain(&mut core),
            vec![("old".into(), proto::disconnect().into_frames())]
        );
        // A second READY: DISCONNECT and forgotten.
        ready(&mut core, t, "w1", "s");
        ready(&mut core, t, "w1", "s");
        assert_eq!(
            drain(&mut core),
            vec![("w1".into(), proto::disconnect().into_frames())]
        );
        assert_eq!(core.worker_count(), 0);
        // A FINAL for a request the worker does not hold.
        ready(&mut core, t, "w2", "s");
        final_(&mut core, t, "w2", "nobody", "x");
        assert_eq!(
            drain(&mut core),
            vec![("w2".into(), proto::disconnect().into_frames())]
        );
        // A worker may not serve mmi.*.
        ready(&mut core, t, "w3", "mmi.service");
        assert_eq!(
            drain(&mut core),
            vec![("w3".into(), proto::disconnect().into_frames())]
        );
        assert_eq!(core.worker_count(), 0);
    }

    #[test]
    fn disconnect_from_a_busy_worker_requeues_its_request() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "s");
        request(&mut core, t, "c1", "s", "job");
        drain(&mut core);
        core.on_message(t, from("w1", proto::disconnect()));
        assert!(
            drain(&mut core).is_empty(),
            "no reply to a worker that left"
        );
        assert_eq!(core.queued(), 1);
        ready(&mut core, t, "w2", "s");
        assert_eq!(as_request(&drain(&mut core)[0].1).0, "c1");
    }

    #[test]
    fn mmi_service_answers_200_404_and_501() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "echo");
        let ask = |core: &mut BrokerCore, service: &str, body: &str| {
            request(core, t, "c", service, body);
            let out = drain(core);
            assert_eq!(out.len(), 1);
            let r = parse_client_reply(&out[0].1).unwrap();
            assert!(r.last);
            assert_eq!(r.service, service);
            String::from_utf8(r.body[0].to_vec()).unwrap()
        };
        assert_eq!(ask(&mut core, "mmi.service", "echo"), "200");
        assert_eq!(ask(&mut core, "mmi.service", "nope"), "404");
        assert_eq!(ask(&mut core, "mmi.other", "echo"), "501");
    }

    #[test]
    fn a_full_queue_refuses_and_framework_requests_get_framework_errors() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        request(&mut core, t, "c1", "s", "a");
        request(&mut core, t, "c2", "s", "b");
        request(&mut core, t, "c3", "s", "c");
        let out = drain(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "c3");
        let r = parse_client_reply(&out[0].1).unwrap();
        assert_eq!(r.body[0].as_ref(), b"503");
        assert_eq!(core.stats().get(Counter::Refused), 1);
        // A framework request envelope gets a framework error reply, workflow id kept.
        let env = crate::wire::encode(&crate::wire::Request {
            args: serde_json::json!({"x": 1}),
            workflow_id: crate::wire::WorkflowId::Str("wf-7".into()),
            traceparent: None,
        })
        .unwrap();
        core.on_message(
            t,
            from("c4", proto::client_request("s", [Bytes::from(env)])),
        );
        let out = drain(&mut core);
        let r = parse_client_reply(&out[0].1).unwrap();
        let reply: crate::wire::Reply<serde_json::Value> = crate::wire::decode(&r.body[0]).unwrap();
        assert_eq!(
            reply.workflow_id,
            crate::wire::WorkflowId::Str("wf-7".into())
        );
        assert_eq!(reply.error.unwrap().code, ErrorCode::Unavailable);
    }

    #[test]
    fn requests_nobody_takes_expire_with_504() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        request(&mut core, t, "c1", "ghost", "a");
        core.on_tick(t + Duration::from_secs(4));
        assert!(drain(&mut core).is_empty());
        core.on_tick(t + Duration::from_secs(5));
        let out = drain(&mut core);
        let r = parse_client_reply(&out[0].1).unwrap();
        assert_eq!(r.body[0].as_ref(), b"504");
        assert_eq!(core.queued(), 0);
        assert!(core.services.is_empty(), "an unused service is forgotten");
    }

    #[test]
    fn malformed_messages_are_dropped_and_a_bad_worker_is_dropped() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        core.on_message(t, Message::new());
        core.on_message(t, from("x", Message::single(b("garbage"))));
        core.on_message(
            t,
            from(
                "x",
                Message::from(vec![b("MDPC02"), Bytes::from_static(&[1])]),
            ),
        );
        assert!(drain(&mut core).is_empty());
        ready(&mut core, t, "w1", "s");
        core.on_message(
            t,
            from(
                "w1",
                Message::from(vec![b("MDPW02"), Bytes::from_static(&[0x42])]),
            ),
        );
        assert_eq!(
            drain(&mut core),
            vec![("w1".into(), proto::disconnect().into_frames())]
        );
        assert_eq!(core.worker_count(), 0);
        assert_eq!(core.stats().get(Counter::Malformed), 3);
    }

    #[test]
    fn a_gone_worker_loses_its_request_to_the_next() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "s");
        ready(&mut core, t, "w2", "s");
        request(&mut core, t, "c1", "s", "job");
        assert_eq!(drain(&mut core)[0].0, "w1");
        core.on_unroutable(t, &b("w1"));
        let out = drain(&mut core);
        assert_eq!(out[0].0, "w2");
        assert_eq!(as_request(&out[0].1).0, "c1");
    }

    #[test]
    fn a_worker_lost_after_partials_gets_its_client_a_503() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "s");
        request(&mut core, t, "c1", "s", "job");
        drain(&mut core);
        core.on_message(t, from("w1", proto::worker_reply(false, b("c1"), [b("p")])));
        core.on_message(t, from("w1", proto::disconnect()));
        let out = drain(&mut core);
        let last = parse_client_reply(&out.last().unwrap().1).unwrap();
        assert!(last.last);
        assert_eq!(last.body[0].as_ref(), b"503");
        assert_eq!(core.queued(), 0);
    }

    fn framework_request(wf: &str, args: serde_json::Value) -> Bytes {
        Bytes::from(
            crate::wire::encode(&crate::wire::Request {
                args,
                workflow_id: crate::wire::WorkflowId::Str(wf.into()),
                traceparent: None,
            })
            .unwrap(),
        )
    }

    fn front_replies(core: &mut BrokerCore) -> Vec<(usize, Vec<Bytes>)> {
        let mut v = Vec::new();
        while let Some((i, m)) = core.pop_frontend_out() {
            v.push((i, m.into_frames()));
        }
        v
    }

    /// The client address and body of a REQUEST sent to a worker.
    fn request_to(frames: &[Bytes]) -> (Bytes, Vec<Bytes>) {
        match parse_to_worker(frames).unwrap() {
            ToWorker::Request { client, body } => (client, body),
            other => panic!("expected a REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn a_frontend_request_is_served_by_a_worker_and_its_final_goes_back_behind_the_envelope() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        ready(&mut core, t, "w1", "echo");
        let req = framework_request("wf-1", serde_json::json!({"x": 1}));
        core.on_frontend_request(t, 3, "echo", vec![b("peer"), Bytes::new()], req.clone());
        let out = drain(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "w1");
        let (addr, body) = request_to(&out[0].1);
        assert_eq!(body, vec![req]);
        assert_eq!(addr.first(), Some(&0u8), "an address no ROUTER peer has");
        assert_eq!(core.frontend_pending(), 1);
        // A PARTIAL is not for a REQ: dropped; the FINAL goes back, envelope first.
        core.on_message(
            t,
            from("w1", proto::worker_reply(false, addr.clone(), [b("p")])),
        );
        assert!(front_replies(&mut core).is_empty());
        core.on_message(t, from("w1", proto::worker_reply(true, addr, [b("reply")])));
        assert!(drain(&mut core).is_empty(), "nothing on the MDP socket");
        assert_eq!(
            front_replies(&mut core),
            vec![(3, vec![b("peer"), Bytes::new(), b("reply")])]
        );
        assert_eq!(core.frontend_pending(), 0);
        assert_eq!(core.stats().get(Counter::Replied), 1);
        // The worker is idle again: the next request (an MDP client's) goes to it.
        request(&mut core, t, "c1", "echo", "x");
        assert_eq!(drain(&mut core)[0].0, "w1");
        // Whatever the core answers itself goes back too, and nothing is kept.
        core.on_frontend_request(t, 0, "mmi.service", vec![b("p")], b("echo"));
        assert_eq!(front_replies(&mut core), vec![(0, vec![b("p"), b("200")])]);
        assert_eq!(core.frontend_pending(), 0);
    }

    #[test]
    fn frontend_requests_share_the_queues_and_are_refused_with_framework_errors() {
        let t = Instant::now();
        let mut core = BrokerCore::new(opts());
        // Cap 2 per service: an MDP client's request and a front-end's fill it.
        request(&mut core, t, "c1", "s", "a");
        core.on_frontend_request(
            t,
            0,
            "s",
            vec![b("p1")],
            framework_request("wf-a", serde_json::json!({})),
        );
        core.on_frontend_request(
            t,
            0,
            "s",
            vec![b("p2"), Bytes::new()],
            framework_request("wf-b", serde_json::json!({})),
        );
        let refused = front_replies(&mut core);
        assert_eq!(refused.len(), 1);
        let (i, frames) = &refused[0];
        assert_eq!((*i, &frames[..2]), (0, &[b("p2"), Bytes::new()][..]));
        let reply: crate::wire::Reply<serde_json::Value> = crate::wire::decode(&frames[2]).unwrap();
        assert_eq!(
            reply.workflow_id,
            crate::wire::WorkflowId::Str("wf-b".into())
        );
        assert_eq!(reply.error.unwrap().code, ErrorCode::Unavailable);
        assert_eq!(core.stats().get(Counter::Refused), 1);
        // No worker within the request timeout: a framework `timeout` error, even for a body
        // that is not a request envelope.
        core.on_frontend_request(t, 1, "ghost", vec![b("p3"), Bytes::new()], b("not msgpack"));
        core.on_tick(t + Duration::from_secs(5));
        let mut late = front_replies(&mut core);
        late.sort_by_key(|(i, _)| *i);
        assert_eq!(late.len(), 2, "{late:?}");
        let (_, p1) = &late[0];
        assert_eq!(p1[0], b("p1"));
        let reply: crate::wire::Reply<serde_json::Value> = crate::wire::decode(&p1[1]).unwrap();
        assert_eq!(
            reply.workflow_id,
            crate::wire::WorkflowId::Str("wf-a".into())
        );
        assert_eq!(reply.error.unwrap().code, ErrorCode::Timeout);
        let (_, p3) = &late[1];
        let reply: crate::wire::Reply<serde_json::Value> = crate::wire::decode(&p3[2]).unwrap();
        let err = reply.error.unwrap();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert!(err.message.contains("ghost"), "{err:?}");
        assert_eq!(core.frontend_pending(), 0);
        // The MDP client's request timed out the MDP way.
        let out = drain(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(
            parse_client_reply(&out[0].1).unwrap().body[0].as_ref(),
            b"504"
        );
    }
}
