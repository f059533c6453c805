//! From a topology and what its services declare to a plan: every edge checked (ends exist,
//! directions and kinds match), which side of each edge binds and which connects, the
//! addresses.json of each service, and the order services start in.
//!
//! Who binds: a replyer, a publisher and an out-state bind (as in the original); the bus binds
//! both its sides. On a push/pull edge the puller binds (a stage with several upstreams fans
//! in), unless the puller's service has replicas: then the pusher binds and every replica
//! connects to it (fan-out). A replicated service never binds.
//!
//! Brokered replyers: a service with `broker = "<broker service>"` binds none of its replyers;
//! each registers with that broker as MDP service `<service>.<connection>` (its addresses.json
//! entry is `{"broker": .., "service": ..}`), the broker binds a front-end for it
//! (`in.<service>.<connection>.replyer`). A requester edge to it calls through the broker: a
//! framework service's requester as an MDP client (`{"broker": .., "service": ..}` in its
//! addresses.json), a Python 0.0.18 requester or the bridge's at that front-end. The broker
//! starts before the services it serves.
//!
//! Start order: consumers before producers (for every edge, its `to` service starts before its
//! `from` service), so nothing is published or pushed before its reader is there, and a
//! leading-edge source starts last. Stop order is the reverse. Request/reply edges may form
//! cycles (they are left out of the order when they do); data-flow edges may not.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::declared::{Decl, Declared, Kind, Runner};
use crate::topology::{End, ServiceSpec, Topology};

/// One socket entry of an addresses.json: `<section>.<side>.<conn>.<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// In (true) or out.
    pub inbound: bool,
    /// Under `states` (true) or `connections`.
    pub state: bool,
    /// The connection or state name.
    pub conn: String,
    /// The socket key (`replyer`, `publisher`, `puller`, ...).
    pub key: &'static str,
}

impl Slot {
    /// `in.reply.replyer`.
    pub fn label(&self) -> String {
        format!(
            "{}.{}.{}",
            if self.inbound { "in" } else { "out" },
            self.conn,
            self.key
        )
    }
}

/// A bound slot of a service: `services[service].binds[index]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindRef {
    /// The binding service.
    pub service: String,
    /// Which of its binds.
    pub index: usize,
}

/// One service, planned.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its name in the topology.
    pub name: String,
    /// Its table in the file.
    pub spec: ServiceSpec,
    /// How it runs.
    pub runner: Runner,
    /// What it declares.
    pub declared: Declared,
    /// The slots it binds (each gets an address of its own).
    pub binds: Vec<Slot>,
    /// The slots it connects, each to a bound slot of another service.
    pub connects: Vec<(Slot, BindRef)>,
    /// The `options` section of its addresses.json.
    pub options: Map<String, Value>,
    /// Its replyers served through a broker: (connection, the broker's MDP endpoint, the
    /// MDP service name).
    pub brokered: Vec<(String, BindRef, String)>,
    /// Its requesters calling a brokered replyer through the broker itself, as MDP clients:
    /// (connection, the broker's MDP endpoint, the MDP service name).
    pub calls: Vec<(String, BindRef, String)>,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The topology it was made from.
    pub topology: Topology,
    /// The services.
    pub services: BTreeMap<String, Planned>,
    /// Start order: groups started together, first to last.
    pub order: Vec<Vec<String>>,
    /// Bound slots no edge reaches (a replyer for people to call, ...): listed at start.
    pub unconnected: Vec<BindRef>,
}

/// Turns bound slots into addresses.
pub trait Addressing {
    /// What the binding service's addresses.json says.
    fn bind(&self, r: &BindRef) -> String;
    /// What a connecting service's addresses.json says.
    fn connect(&self, r: &BindRef) -> String;
}

fn lookup<'a>(declared: &'a Declared, inbound: bool, name: &str) -> Option<&'a Decl> {
    match declared {
        Declared::Fixed {
            inbound: i,
            outbound: o,
        } => {
            if inbound {
                i.get(name)
            } else {
                o.get(name)
            }
        }
        Declared::Bridge => None,
    }
}

fn names(declared: &Declared, inbound: bool) -> String {
    match declared {
        Declared::Fixed {
            inbound: i,
            outbound: o,
        } => {
            let m = if inbound { i } else { o };
            if m.is_empty() {
                "none".into()
            } else {
                m.iter()
                    .map(|(n, d)| format!("{n} ({})", d.kind.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
        Declared::Bridge => "any".into(),
    }
}

/// The socket keys of a kind's addresses.json entry, binding side first.
fn keys(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Replyer => &["replyer"],
        Kind::Requester => &["requester"],
        Kind::Publisher => &["publisher"],
        Kind::Subscriber => &["subscriber"],
        Kind::Pusher => &["pusher"],
        Kind::Puller => &["puller"],
        Kind::FullOut => &["publisher"],
        Kind::FullIn => &["subscriber"],
        Kind::DeltaOut => &["publisher", "replyer"],
        Kind::DeltaIn => &["subscriber", "requester"],
        Kind::BusPublishers => &["publishers"],
        Kind::BusSubscribers => &["subscribers"],
        Kind::BrokerRouter => &["router"],
        Kind::ExternalTarget => &[],
    }
}

struct Builder<'a> {
    topology: &'a Topology,
    services: BTreeMap<String, Planned>,
    errors: Vec<String>,
}

impl Builder<'_> {
    fn slot(
        &self,
        service: &str,
        inbound: bool,
        conn: &str,
        kind: Kind,
        key: &'static str,
    ) -> Slot {
        let _ = service;
        match kind {
            Kind::BusPublishers | Kind::BusSubscribers => Slot {
                inbound: true,
                state: false,
                conn: "bus".into(),
                key,
            },
            Kind::BrokerRouter => Slot {
                inbound: true,
                state: false,
                conn: "broker".into(),
                key,
            },
            _ => Slot {
                inbound,
                state: kind.is_state(),
                conn: conn.into(),
                key,
            },
        }
    }

    /// Binds `slot` for `service` once; returns its reference.
    fn bind(&mut self, service: &str, slot: Slot) -> BindRef {
        let p = self.services.get_mut(service).expect("planned");
        let index = match p.binds.iter().position(|s| *s == slot) {
            Some(i) => i,
            None => {
                p.binds.push(slot);
                p.binds.len() - 1
            }
        };
        BindRef {
            service: service.into(),
            index,
        }
    }

    /// `bind_end` binds its `bind_key` slot and `connect_end` connects its `connect_key`
    /// slot to it: one edge's addresses.
    fn link(
        &mut self,
        (bind_end, bind_in, bind_kind, bind_key): (&End, bool, Kind, &'static str),
        (conn_end, conn_in, conn_kind, conn_key): (&End, bool, Kind, &'static str),
    ) {
        let slot = self.slot(
            &bind_end.service,
            bind_in,
            &bind_end.name,
            bind_kind,
            bind_key,
        );
        let r = self.bind(&bind_end.service, slot);
        let slot = self.slot(
            &conn_end.service,
            conn_in,
            &conn_end.name,
            conn_kind,
            conn_key,
        );
        self.connect(&conn_end.service, slot, r);
    }

    fn connect(&mut self, service: &str, slot: Slot, to: BindRef) {
        let p = self.services.get_mut(service).expect("planned");
        if !p.connects.iter().any(|(s, _)| *s == slot) {
            p.connects.push((slot, to));
        }
    }

    fn set_option(&mut self, service: &str, inbound: bool, conn: &str, key: &str, v: Value) {
        let p = self.services.get_mut(service).expect("planned");
        let side = if inbound { "in" } else { "out" };
        let entry = p
            .options
            .entry("connections")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|c| c.entry(side).or_insert_with(|| json!({})));
        if let Some(Value::Object(side)) = entry {
            if let Value::Object(conn) = side.entry(conn).or_insert_with(|| json!({})) {
                conn.insert(key.into(), v);
            }
        }
    }

    fn replicas(&self, service: &str) -> u32 {
        self.topology.services[service].replicas
    }
}

/// Resolves one end of an edge; `inbound` is the side it must be on.
fn resolve(b: &Builder<'_>, end: &End, inbound: bool, edge: &str) -> Result<Kind, String> {
    let Some(p) = b.services.get(&end.service) else {
        return Err(format!(
            "edge \"{edge}\": there is no service {:?} (services: {})",
            end.service,
            b.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    };
    let (want, other) = if inbound {
        ("in", "out")
    } else {
        ("out", "in")
    };
    if let Some(d) = lookup(&p.declared, inbound, &end.name) {
        return Ok(d.kind);
    }
    if matches!(p.declared, Declared::Bridge) {
        return Err(String::new()); // decided by the other end
    }
    let msg = if lookup(&p.declared, !inbound, &end.name).is_some() {
        format!(
            "edge \"{edge}\": {end} is an {other}-connection or {other}-state of {:?}; an edge goes from an out side to an in side",
            end.service
        )
    } else {
        format!(
            "edge \"{edge}\": {:?} has no {want}-connection or {want}-state {:?} (its {want} side: {})",
            end.service,
            end.name,
            names(&p.declared, inbound)
        )
    };
    Err(msg)
}

/// Builds the plan. `declared` holds what each service declares and how it runs.
pub fn plan(
    topology: &Topology,
    mut declared: BTreeMap<String, (Runner, Declared)>,
) -> Result<Plan, Vec<String>> {
    let mut b = Builder {
        topology,
        services: BTreeMap::new(),
        errors: Vec::new(),
    };
    for (name, spec) in &topology.services {
        let Some((runner, decl)) = declared.remove(name) else {
            continue;
        };
        let options = spec
            .options
            .as_ref()
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        b.services.insert(
            name.clone(),
            Planned {
                name: name.clone(),
                spec: spec.clone(),
                runner,
                declared: decl,
                binds: Vec::new(),
                connects: Vec::new(),
                options,
                brokered: Vec::new(),
                calls: Vec::new(),
            },
        );
    }
    if b.services.len() != topology.services.len() {
        // What could not be read was reported by the caller; edges to it would only repeat.
        return Err(b.errors);
    }

    // Replyers served through a broker: (service, connection) -> the broker's front-end, its
    // router and the MDP service name.
    let mut fronts: BTreeMap<(String, String), (BindRef, BindRef, String)> = BTreeMap::new();
    let mut broker_arcs: Vec<(String, String)> = Vec::new();
    let served: Vec<(String, String)> = topology
        .services
        .iter()
        .filter_map(|(n, s)| s.broker.clone().map(|b| (n.clone(), b)))
        .collect();
    for (name, broker) in served {
        let who = format!("service {name:?}: broker = {broker:?}");
        let Some(bp) = b.services.get(&broker) else {
            b.errors.push(format!(
                "{who}: there is no service {broker:?} (give it `service = \"broker\"`)"
            ));
            continue;
        };
        let is_broker = matches!(&bp.declared, Declared::Fixed { inbound, .. }
            if inbound.values().any(|d| d.kind == Kind::BrokerRouter));
        if !is_broker {
            b.errors.push(format!(
                "{who}: {broker:?} is not a broker (`service = \"broker\"`)"
            ));
            continue;
        }
        let p = &b.services[&name];
        if p.runner.is_python() {
            b.errors.push(format!(
                "{who}: a Python service_framework 0.0.18 replyer cannot register with a broker (it speaks no MDP); call it directly"
            ));
            continue;
        }
        let replyers: Vec<String> = match &p.declared {
            Declared::Fixed { inbound, .. } => inbound
                .iter()
                .filter(|(_, d)| d.kind == Kind::Replyer)
                .map(|(c, _)| c.clone())
                .collect(),
            Declared::Bridge => Vec::new(),
        };
        if replyers.is_empty() {
            b.errors.push(format!(
                "{who}: {name:?} has no replyer to serve through a broker"
            ));
            continue;
        }
        let router = b.bind(
            &broker,
            Slot {
                inbound: true,
                state: false,
                conn: "broker".into(),
                key: "router",
            },
        );
        for conn in replyers {
            let mdp = format!("{name}.{conn}");
            let front = b.bind(
                &broker,
                Slot {
                    inbound: true,
                    state: false,
                    conn: mdp.clone(),
                    key: "replyer",
                },
            );
            if let Some(p) = b.services.get_mut(&name) {
                p.brokered.push((conn.clone(), router.clone(), mdp.clone()));
            }
            fronts.insert((name.clone(), conn), (front, router.clone(), mdp));
        }
        broker_arcs.push((name.clone(), broker.clone()));
    }

    // Each edge: both ends resolved and their kinds matched.
    let mut typed: Vec<(usize, Kind, Kind)> = Vec::new();
    for (i, edge) in topology.edges.iter().enumerate() {
        let text = edge.to_string();
        let from = resolve(&b, &edge.from, false, &text);
        let to = resolve(&b, &edge.to, true, &text);
        let (from, to) = match (from, to) {
            (Ok(f), Ok(t)) => (f, t),
            // The bridge takes the kind the other end needs.
            (Ok(f), Err(e)) if e.is_empty() => match f {
                Kind::Publisher | Kind::BusSubscribers => (f, Kind::Subscriber),
                _ => {
                    b.errors.push(format!(
                        "edge \"{text}\": the bridge follows a publisher (an SSE route) or calls a replyer (a POST route), not a {}",
                        f.name()
                    ));
                    continue;
                }
            },
            (Err(e), Ok(t)) if e.is_empty() => match t {
                Kind::Replyer => (Kind::Requester, t),
                _ => {
                    b.errors.push(format!(
                        "edge \"{text}\": the bridge calls a replyer (a POST route) or follows a publisher (an SSE route), not a {}",
                        t.name()
                    ));
                    continue;
                }
            },
            (Err(e1), Err(e2)) if e1.is_empty() && e2.is_empty() => {
                b.errors.push(format!(
                    "edge \"{text}\": both ends are bridges; an edge joins a bridge to a bus service"
                ));
                continue;
            }
            (f, t) => {
                for e in [f.err(), t.err()].into_iter().flatten() {
                    if !e.is_empty() {
                        b.errors.push(e);
                    }
                }
                continue;
            }
        };
        if !from.feeds().contains(&to) {
            let feeds: Vec<_> = from.feeds().iter().map(|k| k.name()).collect();
            b.errors.push(format!(
                "edge \"{text}\": {} is a {} and {} is a {}: a {} feeds {}",
                edge.from,
                from.name(),
                edge.to,
                to.name(),
                from.name(),
                if feeds.is_empty() {
                    "nothing (it has no address)".to_owned()
                } else {
                    format!("a {}", feeds.join(" or a "))
                }
            ));
            continue;
        }
        if edge.from.service == edge.to.service {
            b.errors.push(format!(
                "edge \"{text}\": a service feeding itself is a loop; call the function directly"
            ));
            continue;
        }
        typed.push((i, from, to));
    }

    // Who binds: per connection, the edges reaching it.
    let mut into: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut out_of: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &(i, _, _) in &typed {
        let e = &topology.edges[i];
        into.entry((e.to.service.clone(), e.to.name.clone()))
            .or_default()
            .push(i);
        out_of
            .entry((e.from.service.clone(), e.from.name.clone()))
            .or_default()
            .push(i);
    }
    let kind_of = |i: usize| typed.iter().find(|t| t.0 == i).map(|t| (t.1, t.2));

    // Pushers bind when one of their pullers is replicated.
    let pusher_binds = |b: &Builder<'_>, from: &End| -> bool {
        out_of[&(from.service.clone(), from.name.clone())]
            .iter()
            .any(|&j| b.replicas(&topology.edges[j].to.service) > 1)
    };

    for &(i, from_kind, to_kind) in &typed {
        let e = &topology.edges[i];
        let text = e.to_string();
        let n_in = into[&(e.to.service.clone(), e.to.name.clone())].len();
        let n_out = out_of[&(e.from.service.clone(), e.from.name.clone())].len();
        match from_kind {
            Kind::Requester => {
                if n_out > 1 {
                    b.errors.push(format!(
                        "edge \"{text}\": {} is one requester; it calls one replyer (it has {n_out} edges)",
                        e.from
                    ));
                    continue;
                }
                if let Some((front, router, mdp)) =
                    fronts.get(&(e.to.service.clone(), e.to.name.clone()))
                {
                    let caller = &b.services[&e.from.service];
                    let speaks_mdp = !caller.runner.is_python()
                        && matches!(caller.declared, Declared::Fixed { .. });
                    if speaks_mdp {
                        // A framework requester calls through the broker itself, as an MDP
                        // client: `{"broker": router, "service": name}`.
                        if let Some(p) = b.services.get_mut(&e.from.service) {
                            p.calls
                                .push((e.from.name.clone(), router.clone(), mdp.clone()));
                        }
                    } else {
                        // A Python 0.0.18 requester (plain REQ) through the broker's
                        // front-end for that replyer.
                        let slot =
                            b.slot(&e.from.service, false, &e.from.name, from_kind, "requester");
                        b.connect(&e.from.service, slot, front.clone());
                    }
                    continue;
                }
                b.link(
                    (&e.to, true, to_kind, "replyer"),
                    (&e.from, false, from_kind, "requester"),
                );
            }
            Kind::Publisher | Kind::FullOut | Kind::DeltaOut | Kind::BusSubscribers => {
                if n_in > 1 {
                    b.errors.push(format!(
                        "edge \"{text}\": {} already follows another {}; one {} reads one publisher (several publishers reach one subscriber through a bus)",
                        e.to,
                        from_kind.name(),
                        to_kind.name()
                    ));
                    continue;
                }
                if to_kind == Kind::BusPublishers {
                    // The publisher connects to the bus, as an XPUB client.
                    if let Some(d) =
                        lookup(&b.services[&e.from.service].declared, false, &e.from.name)
                    {
                        let python = b.services[&e.from.service].runner.is_python();
                        let x_pub =
                            d.creation.get("is_x_pub").and_then(Value::as_bool) == Some(true);
                        if python && !x_pub {
                            b.errors.push(format!(
                                "edge \"{text}\": {} is a Python publisher without is_x_pub: it would bind instead of joining the bus (declare 'is_x_pub': True)",
                                e.from
                            ));
                            continue;
                        }
                    }
                    if out_of[&(e.from.service.clone(), e.from.name.clone())]
                        .iter()
                        .any(|&j| kind_of(j).map(|k| k.1) != Some(Kind::BusPublishers))
                    {
                        b.errors.push(format!(
                            "edge \"{text}\": {} feeds the bus and subscribers directly; it either binds or joins a bus, not both",
                            e.from
                        ));
                        continue;
                    }
                    b.link(
                        (&e.to, true, to_kind, "publishers"),
                        (&e.from, false, from_kind, "publisher"),
                    );
                    if !b.services[&e.from.service].runner.is_python() {
                        b.set_option(
                            &e.from.service,
                            false,
                            &e.from.name,
                            "is_x_pub",
                            json!(true),
                        );
                    }
                    continue;
                }
                let (from_keys, to_keys) = (keys(from_kind), keys(to_kind));
                for (fk, tk) in from_keys.iter().zip(to_keys) {
                    b.link((&e.from, false, from_kind, fk), (&e.to, true, to_kind, tk));
                }
            }
            Kind::Pusher => {
                // An acked pusher speaks DEALER, a plain one PUSH: both ends must agree, or
                // every handshake between them fails.
                let acked = |end: &End, inbound: bool| -> bool {
                    let p = &b.services[&end.service];
                    let side = if inbound { "in" } else { "out" };
                    p.options
                        .get("connections")
                        .and_then(|c| c.get(side))
                        .and_then(|c| c.get(&end.name))
                        .and_then(|c| c.get("acked"))
                        .and_then(Value::as_bool)
                        .or_else(|| {
                            lookup(&p.declared, inbound, &end.name)
                                .and_then(|d| d.creation.get("acked"))
                                .and_then(Value::as_bool)
                        })
                        .unwrap_or(false)
                };
                let (a_from, a_to) = (acked(&e.from, false), acked(&e.to, true));
                if a_from != a_to {
                    let yes_no = |a: bool| if a { "acked" } else { "not acked" };
                    b.errors.push(format!(
                        "edge \"{text}\": the pusher {} is {} and the puller {} is {}: both ends must agree (set `acked` on both, in the code or in `options`)",
                        e.from,
                        yes_no(a_from),
                        e.to,
                        yes_no(a_to)
                    ));
                    continue;
                }
                let binds = pusher_binds(&b, &e.from);
                if binds {
                    // Fan-out: every puller connects to this pusher.
                    if n_in > 1 {
                        b.errors.push(format!(
                            "edge \"{text}\": {} is replicated, so it connects to its pusher {}, and cannot also take other pushers' work ({n_in} edges reach it)",
                            e.to, e.from
                        ));
                        continue;
                    }
                    b.link(
                        (&e.from, false, from_kind, "pusher"),
                        (&e.to, true, to_kind, "puller"),
                    );
                    b.set_option(
                        &e.from.service,
                        false,
                        &e.from.name,
                        "is_binder",
                        json!(true),
                    );
                    b.set_option(&e.to.service, true, &e.to.name, "is_binder", json!(false));
                } else {
                    // Fan-in: every pusher connects to this puller.
                    if n_out > 1 {
                        b.errors.push(format!(
                            "edge \"{text}\": {} feeds {n_out} pullers of unreplicated services; a pusher connects to one puller (give the worker service replicas instead)",
                            e.from
                        ));
                        continue;
                    }
                    b.link(
                        (&e.to, true, to_kind, "puller"),
                        (&e.from, false, from_kind, "pusher"),
                    );
                    b.set_option(&e.to.service, true, &e.to.name, "is_binder", json!(true));
                    b.set_option(
                        &e.from.service,
                        false,
                        &e.from.name,
                        "is_binder",
                        json!(false),
                    );
                }
            }
            _ => {}
        }
    }

    // Declared connections no edge reaches: binders get an address anyway; connectors cannot
    // run without one.
    let mut unconnected = Vec::new();
    let names: Vec<String> = b.services.keys().cloned().collect();
    for name in &names {
        let Declared::Fixed { inbound, outbound } = b.services[name].declared.clone() else {
            continue;
        };
        for (is_in, map) in [(true, inbound), (false, outbound)] {
            for (conn, d) in map {
                let reached = if is_in {
                    into.contains_key(&(name.clone(), conn.clone()))
                } else {
                    out_of.contains_key(&(name.clone(), conn.clone()))
                };
                if reached || d.kind == Kind::ExternalTarget {
                    continue;
                }
                if let Some((front, _, _)) = fronts.get(&(name.clone(), conn.clone())) {
                    // Served through the broker: its front-end is what is left unreached.
                    unconnected.push(front.clone());
                    continue;
                }
                if d.kind == Kind::BrokerRouter {
                    let slot = b.slot(name, is_in, &conn, d.kind, "router");
                    let r = b.bind(name, slot);
                    if !broker_arcs.iter().any(|(_, br)| br == name) {
                        unconnected.push(r);
                    }
                    continue;
                }
                let binder = match d.kind {
                    Kind::Replyer
                    | Kind::FullOut
                    | Kind::DeltaOut
                    | Kind::BusPublishers
                    | Kind::BusSubscribers
                    | Kind::Pusher
                    | Kind::Puller => true,
                    Kind::Publisher => {
                        d.creation.get("is_x_pub").and_then(Value::as_bool) != Some(true)
                    }
                    _ => false,
                };
                if !binder {
                    b.errors.push(format!(
                        "{name}.{conn} ({}) has no edge: it must connect somewhere; add \"{}\"",
                        d.kind.name(),
                        if is_in {
                            format!("<service>.<out> -> {name}.{conn}")
                        } else {
                            format!("{name}.{conn} -> <service>.<in>")
                        }
                    ));
                    continue;
                }
                for key in keys(d.kind) {
                    let slot = b.slot(name, is_in, &conn, d.kind, key);
                    let r = b.bind(name, slot);
                    unconnected.push(r);
                }
                if matches!(d.kind, Kind::Pusher | Kind::Puller) {
                    b.set_option(name, is_in, &conn, "is_binder", json!(true));
                }
            }
        }
    }

    // A replicated service cannot bind: its replicas would fight over one address.
    for (name, p) in &b.services {
        if p.spec.replicas > 1 {
            for s in &p.binds {
                b.errors.push(format!(
                    "service {name:?} has {} replicas, but it binds {} ({}): only one process can bind an address",
                    p.spec.replicas,
                    s.label(),
                    "a replyer, a publisher, an out-state and an unreplicated stage's puller bind"
                ));
            }
        }
    }

    let order = match start_order(topology, &typed, &broker_arcs) {
        Ok(o) => o,
        Err(e) => {
            b.errors.push(e);
            Vec::new()
        }
    };
    if !b.errors.is_empty() {
        return Err(b.errors);
    }
    Ok(Plan {
        topology: topology.clone(),
        services: b.services,
        order,
        unconnected,
    })
}

/// Levels of services, consumers first. Request/reply edges are dropped from the order when
/// they close a cycle; a cycle of data-flow edges is an error naming it.
fn start_order(
    topology: &Topology,
    typed: &[(usize, Kind, Kind)],
    broker_arcs: &[(String, String)],
) -> Result<Vec<Vec<String>>, String> {
    let all: BTreeSet<String> = topology.services.keys().cloned().collect();
    let arcs = |with_requests: bool| -> Vec<(String, String)> {
        let mut arcs: Vec<(String, String)> = typed
            .iter()
            .filter(|(_, f, _)| with_requests || !f.is_request())
            .map(|&(i, _, _)| {
                let e = &topology.edges[i];
                (e.from.service.clone(), e.to.service.clone())
            })
            .collect();
        if with_requests {
            // A brokered service starts after its broker, as a requester after its replyer.
            arcs.extend(broker_arcs.iter().cloned());
        }
        arcs
    };
    let levels = |arcs: &[(String, String)]| -> Result<Vec<Vec<String>>, BTreeSet<String>> {
        // A producer waits for every consumer it feeds.
        let mut left = all.clone();
        let mut levels = Vec::new();
        while !left.is_empty() {
            let ready: Vec<String> = left
                .iter()
                .filter(|s| !arcs.iter().any(|(f, t)| f == *s && left.contains(t)))
                .cloned()
                .collect();
            if ready.is_empty() {
                return Err(left);
            }
            for s in &ready {
                left.remove(s);
            }
            levels.push(ready);
        }
        Ok(levels)
    };
    match levels(&arcs(true)) {
        Ok(l) => Ok(l),
        Err(_) => levels(&arcs(false)).map_err(|left| {
            let cycle: Vec<String> = topology
                .edges
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    typed.iter().any(|t| t.0 == *i && !t.1.is_request())
                        && left.contains(&e.from.service)
                        && left.contains(&e.to.service)
                })
                .map(|(_, e)| format!("\"{e}\""))
                .collect();
            format!(
                "these edges form a cycle: {} (a pipeline, a stream or a state may not feed itself back; only request/reply edges may go both ways)",
                cycle.join(", ")
            )
        }),
    }
}

impl Plan {
    /// The start order flattened.
    pub fn start_sequence(&self) -> Vec<String> {
        self.order.iter().flatten().cloned().collect()
    }

    /// The addresses.json of `service`.
    pub fn addresses(&self, service: &str, addressing: &dyn Addressing) -> Value {
        let p = &self.services[service];
        let mut doc = json!({
            "connections": {"in": {}, "out": {}},
            "states": {"in": {}, "out": {}},
        });
        let mut put = |slot: &Slot, addr: String| {
            let section = if slot.state { "states" } else { "connections" };
            let side = if slot.inbound { "in" } else { "out" };
            if let Some(Value::Object(m)) = doc.get_mut(section).and_then(|s| s.get_mut(side)) {
                if let Value::Object(c) = m.entry(slot.conn.clone()).or_insert_with(|| json!({})) {
                    c.insert(slot.key.into(), Value::String(addr));
                }
            }
        };
        for (i, slot) in p.binds.iter().enumerate() {
            put(
                slot,
                addressing.bind(&BindRef {
                    service: service.into(),
                    index: i,
                }),
            );
        }
        for (slot, to) in &p.connects {
            put(slot, addressing.connect(to));
        }
        for (side, list) in [("in", &p.brokered), ("out", &p.calls)] {
            for (conn, router, mdp) in list {
                let connections = doc
                    .as_object_mut()
                    .map(|d| d.entry("connections").or_insert_with(|| json!({})));
                if let Some(Value::Object(sides)) = connections {
                    if let Value::Object(m) = sides.entry(side).or_insert_with(|| json!({})) {
                        m.insert(
                            conn.clone(),
                            json!({"broker": addressing.connect(router), "service": mdp}),
                        );
                    }
                }
            }
        }
        if !p.options.is_empty() && !p.runner.is_python() {
            doc["options"] = Value::Object(p.options.clone());
        }
        doc
    }

    /// `service.conn (kind)` of a bound slot, for the listing of unconnected ones.
    pub fn slot_of(&self, r: &BindRef) -> &Slot {
        &self.services[&r.service].binds[r.index]
    }
}
