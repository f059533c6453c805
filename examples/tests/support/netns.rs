//! Hosts for tests that cross a network: network namespaces made by the test itself (a
//! switch namespace holding a linux bridge, a veth per host), removed when dropped.

use std::process::Command;

/// Hosts as network namespaces: `sw` holds a bridge, each host (three replicas and a client)
/// a veth whose other end is on the bridge, addressed 10.213.N.0/24 (N from the pid). All of
/// it is removed when this is dropped, also when the test fails.
pub struct Hosts {
    prefix: String,
    net: String,
    names: Vec<String>,
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// The switch, then `hosts` hosts. `Err` when namespaces cannot be made here.
    pub fn new(hosts: usize) -> Result<Hosts, String> {
        let id = std::process::id();
        let mut h = Hosts {
            prefix: format!("sfr{}", id % 100_000),
            net: format!("10.213.{}", id % 250),
            names: Vec::new(),
        };
        let sw = h.ns("sw");
        ip(&["netns", "add", &sw])?;
        h.names.push(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = h.ns(&format!("h{i}"));
            ip(&["netns", "add", &ns])?;
            h.names.push(ns.clone());
            // eth0 in the host, p<i> on the switch's bridge.
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", h.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(h)
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.net, host + 1)
    }

    /// Cuts (or heals) host `i`'s link: its port on the switch goes down.
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns("sw"), "link", "set", &format!("p{i}"), state]).expect("link set");
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `n` namespace hosts for a test, or `None` (said on stdout) where they cannot be made
/// here: not root, or the kernel refuses namespaces. Any other failure fails the test.
pub fn hosts_for_test(n: usize) -> Option<Hosts> {
    if !is_root() {
        println!("skipped: network namespaces need root (CI runs as root)");
        return None;
    }
    match Hosts::new(n) {
        Ok(h) => Some(h),
        Err(e) if e.contains("Operation not permitted") || e.contains("Permission denied") => {
            println!("skipped: the kernel refuses network namespaces here: {e}");
            None
        }
        Err(e) => panic!("making the namespace hosts: {e}"),
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
