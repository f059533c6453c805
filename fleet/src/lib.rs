//! `service-framework up`: a topology file names services (built-ins, Rust service binaries,
//! Python `service_framework` 0.0.18 modules), their config and the edges between them; `up`
//! checks it, assigns free local ports, writes each service's addresses.json, starts the
//! services consumers first, prefixes their log lines, shows their status, restarts the ones
//! that crash, and stops them producers first on Ctrl-C or SIGTERM. `up --emit k8s` renders
//! the same topology as Kubernetes manifests.
//!
//! Layers: [`topology`] (the file) -> [`declared`] (what each service declares) -> [`plan`]
//! (edges checked, who binds, start order) -> [`supervise`] (processes).

pub mod declared;
pub mod k8s;
pub mod plan;
pub mod supervise;
pub mod topology;

use std::collections::BTreeMap;
use std::path::Path;

pub use plan::Plan;
pub use topology::Topology;

/// Reads the file, asks every service what it declares (concurrently), and plans. Every
/// mistake found is in the error list.
pub async fn load(path: &Path) -> Result<Plan, Vec<String>> {
    let topology = std::sync::Arc::new(Topology::read(path)?);
    let mut set = tokio::task::JoinSet::new();
    for name in topology.services.keys() {
        let (t, n) = (topology.clone(), name.clone());
        set.spawn(async move {
            let r = declared::declared(&t, &n).await;
            (n, r)
        });
    }
    let mut found = BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((name, Ok(d))) => {
                found.insert(name, d);
            }
            Ok((_, Err(e))) => errors.push(e),
            Err(e) => errors.push(format!("reading a service's declarations failed: {e}")),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        return Err(errors);
    }
    plan::plan(&topology, found)
}

/// A human summary of a plan: what `up --check` prints.
pub fn summary(plan: &Plan) -> String {
    let mut s = format!(
        "{}: {} service(s), {} edge(s): ok\n",
        plan.topology.path.display(),
        plan.services.len(),
        plan.topology.edges.len()
    );
    for (name, p) in &plan.services {
        s.push_str(&format!(
            "  {name}: {}{}{}\n",
            p.runner.describe(),
            if p.spec.main { ", main mode" } else { "" },
            if p.spec.replicas > 1 {
                format!(", {} replicas", p.spec.replicas)
            } else {
                String::new()
            }
        ));
        for b in &p.binds {
            s.push_str(&format!("    binds {}\n", b.label()));
        }
        for (c, to) in &p.connects {
            s.push_str(&format!(
                "    connects {} to {} {}\n",
                c.label(),
                to.service,
                plan.slot_of(to).label()
            ));
        }
        for (conn, router, mdp) in &p.brokered {
            s.push_str(&format!(
                "    serves in.{conn} through {} {} as MDP service {mdp}\n",
                router.service,
                plan.slot_of(router).label()
            ));
        }
        for (conn, router, mdp) in &p.calls {
            s.push_str(&format!(
                "    calls MDP service {mdp} from out.{conn} through {} {}\n",
                router.service,
                plan.slot_of(router).label()
            ));
        }
    }
    s.push_str("start order: ");
    s.push_str(
        &plan
            .order
            .iter()
            .map(|l| l.join(" + "))
            .collect::<Vec<_>>()
            .join(", then "),
    );
    s.push('\n');
    s
}
