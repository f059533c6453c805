//! Child processes for the resources and bridge patterns: started with their output read
//! line by line, every wait bounded, killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A child process whose stdout and stderr lines are collected; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    /// When `spawn` was called.
    pub started: Instant,
}

fn pump<R: Read + Send + 'static>(r: R, tx: Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            // Plain text: the framework colours its logs only on a terminal, never on a pipe.
            if tx.send(line).is_err() {
                return;
            }
        }
    });
}

impl Proc {
    /// Starts `program` with `args`; stdin is a pipe kept open (a child may exit when it
    /// closes), stdout and stderr are read line by line.
    pub fn spawn(program: &Path, args: &[&str], cwd: Option<&Path>) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
        let (tx, rx) = channel();
        pump(child.stdout.take().expect("piped"), tx.clone());
        pump(child.stderr.take().expect("piped"), tx);
        Ok(Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            started,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line containing `needle`; returns it and when it was read.
    pub fn wait_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line.clone());
                    if hit {
                        return Ok((line, Instant::now()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => anyhow::bail!(
                    "no output line containing {needle:?} within {timeout:?}; output so far:\n{}",
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    anyhow::bail!(
                        "the process ended ({status:?}) without a line containing {needle:?}; output:\n{}",
                        self.tail()
                    )
                }
            }
        }
    }

    /// Every output line read so far, after taking in those already waiting (no blocking).
    pub fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(20);
        self.seen[from..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The endpoint in a `... endpoint=tcp://...` log line.
pub fn endpoint_in(line: &str) -> Option<String> {
    let at = line.find("endpoint=")?;
    line[at + "endpoint=".len()..]
        .split_whitespace()
        .next()
        .map(|s| s.trim_matches('"').to_owned())
}

/// The line the raw echo server prints once it serves.
pub const RAW_SERVING: &str = "raw echo serving";

/// `sf-bench --raw-echo-server`: the raw baseline of the resources pattern, a `zeromq`
/// ROUTER echo on a current-thread runtime, as small as a hand-written service gets. Binds
/// 127.0.0.1 on an ephemeral port, prints `raw echo serving endpoint=...` on stderr, and exits
/// when its stdin closes (so it never outlives the harness).
pub fn raw_echo_server() -> std::process::ExitCode {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let rt = crate::util::runtime(crate::util::Flavor::Current);
    let result = rt.block_on(async {
        let ep = crate::reqrep::raw_router_echo().await?;
        eprintln!("{RAW_SERVING} endpoint={ep}");
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw echo server failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_a_log_line() {
        assert_eq!(
            endpoint_in(r#"INFO replyer serving connection=reply endpoint="tcp://127.0.0.1:4000""#)
                .as_deref(),
            Some("tcp://127.0.0.1:4000")
        );
        assert_eq!(
            endpoint_in("raw echo serving endpoint=tcp://127.0.0.1:9").as_deref(),
            Some("tcp://127.0.0.1:9")
        );
        assert_eq!(endpoint_in("nothing"), None);
    }
}
