//! Figures, targets and the printed table.

use std::fmt::Write as _;

use serde::Serialize;

/// A target from issue 6, shown beside a figure. Targets are reported, never asserted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// framework / raw at least this (throughput).
    RatioAtLeast(f64),
    /// framework / raw at most this (latency).
    RatioAtMost(f64),
    /// The framework figure at least this.
    AtLeast(f64),
    /// The framework figure at most this.
    AtMost(f64),
}

impl Target {
    /// How the target reads in the table.
    pub fn describe(&self, unit: &str) -> String {
        match *self {
            Target::RatioAtLeast(r) => format!("ratio>={r}"),
            Target::RatioAtMost(r) => format!("ratio<={r}"),
            Target::AtLeast(v) => format!(">={}", short_number(v, unit)),
            Target::AtMost(v) => format!("<={}", short_number(v, unit)),
        }
    }

    /// Whether the figures meet it (`None` when a figure is missing).
    pub fn check(&self, framework: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match *self {
            Target::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Target::RatioAtMost(r) => ratio.map(|x| x <= r),
            Target::AtLeast(v) => framework.map(|x| x >= v),
            Target::AtMost(v) => framework.map(|x| x <= v),
        }
    }
}

/// PASS / FAIL against the targets of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Every target that could be checked is met.
    Pass,
    /// At least one target is missed.
    Fail,
}

/// One figure, through the framework and through the raw socket library.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What ran (`1 caller, multi-thread`).
    pub case: String,
    /// What was measured (`round trips/s`).
    pub metric: String,
    /// Unit of both figures: `msg/s`, `rt/s`, `req/s`, `upd/s`, `us`, `ms`, `msgs`, `MiB`.
    pub unit: String,
    /// Through the framework.
    pub framework: Option<f64>,
    /// Through the raw `zeromq` crate (or the raw baseline named in the note).
    pub raw: Option<f64>,
    /// framework / raw.
    pub ratio: Option<f64>,
    /// Targets from issue 6.
    pub targets: Vec<Target>,
    /// Against the targets.
    pub verdict: Option<Verdict>,
    /// Anything the figures need to be read right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    /// A row with no figures yet.
    pub fn new(case: impl Into<String>, metric: impl Into<String>, unit: &str) -> Row {
        Row {
            case: case.into(),
            metric: metric.into(),
            unit: unit.to_owned(),
            framework: None,
            raw: None,
            ratio: None,
            targets: Vec::new(),
            verdict: None,
            note: None,
        }
    }

    /// Sets the framework figure.
    pub fn fw(mut self, v: impl Into<Option<f64>>) -> Row {
        self.framework = v.into();
        self
    }

    /// Sets the raw figure.
    pub fn raw(mut self, v: impl Into<Option<f64>>) -> Row {
        self.raw = v.into();
        self
    }

    /// Adds a target.
    pub fn target(mut self, t: Target) -> Row {
        self.targets.push(t);
        self
    }

    /// Sets the note.
    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = Some(n.into());
        self
    }

    /// Computes the ratio and the verdict.
    pub fn finish(mut self) -> Row {
        self.ratio = match (self.framework, self.raw) {
            (Some(f), Some(r)) if r != 0.0 => Some(f / r),
            _ => None,
        };
        let checks: Vec<Option<bool>> = self
            .targets
            .iter()
            .map(|t| t.check(self.framework, self.ratio))
            .collect();
        self.verdict = if checks.contains(&Some(false)) {
            Some(Verdict::Fail)
        } else if checks.iter().any(|c| c.is_some()) {
            Some(Verdict::Pass)
        } else {
            None
        };
        self
    }
}

/// The figures of one pattern.
#[derive(Debug, Clone, Serialize)]
pub struct PatternReport {
    /// `reqrep`, `pubsub`, `pipeline`, `delta`, `resources`, `bridge`.
    pub name: String,
    /// What the pattern measures.
    pub title: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// Notes printed under the table.
    pub notes: Vec<String>,
    /// Wall time the pattern took.
    pub elapsed_s: f64,
    /// Headers of the two figure columns and their ratio in the printed table (`framework`,
    /// `raw`, `fw/raw` unless the pattern compares something else).
    pub columns: [String; 3],
}

impl PatternReport {
    /// An empty report for `name`.
    pub fn new(name: &str, title: &str) -> PatternReport {
        PatternReport {
            name: name.to_owned(),
            title: title.to_owned(),
            rows: Vec::new(),
            notes: Vec::new(),
            elapsed_s: 0.0,
            columns: ["framework", "raw", "fw/raw"].map(str::to_owned),
        }
    }

    /// Renames the figure columns of the printed table (the JSON keeps `framework`, `raw`).
    pub fn columns(mut self, measured: &str, baseline: &str, ratio: &str) -> PatternReport {
        self.columns = [measured, baseline, ratio].map(str::to_owned);
        self
    }

    /// Adds a row (computing its ratio and verdict).
    pub fn push(&mut self, row: Row) {
        self.rows.push(row.finish());
    }

    /// Adds a note.
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// /proc/loadavg when the run started (other work on the machine makes figures noisy).
    pub loadavg_at_start: String,
}

impl Machine {
    /// Reads it from the running system.
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .ok()
            .or_else(|| {
                std::process::Command::new("uname")
                    .arg("-r")
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Machine {
            cores,
            kernel,
            cpu,
            loadavg_at_start,
        }
    }
}

/// Everything one run measured; written as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `short` or `full`.
    pub mode: String,
    /// `release` or `debug` (debug figures say little).
    pub profile: String,
    /// Where it ran.
    pub machine: Machine,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
    /// One entry per pattern run.
    pub patterns: Vec<PatternReport>,
}

impl Report {
    /// The header printed before the tables.
    pub fn header(&self) -> String {
        format!(
            "sf-bench: framework vs raw zeromq 0.7 | mode {} | {} build\nmachine: {} cores | kernel {} | cpu {} | load avg at start {}\n",
            self.mode,
            self.profile,
            self.machine.cores,
            self.machine.kernel,
            self.machine.cpu,
            self.machine.loadavg_at_start
        )
    }

    /// The whole printed report.
    pub fn render(&self) -> String {
        let mut out = self.header();
        for p in &self.patterns {
            out.push('\n');
            out.push_str(&render_pattern(p));
        }
        let (pass, fail) = self
            .patterns
            .iter()
            .flat_map(|p| &p.rows)
            .fold((0, 0), |(p, f), r| match r.verdict {
                Some(Verdict::Pass) => (p + 1, f),
                Some(Verdict::Fail) => (p, f + 1),
                None => (p, f),
            });
        let _ = writeln!(
            out,
            "\ntargets (issue 6, reported not asserted): {pass} PASS, {fail} FAIL; total {:.1} s",
            self.elapsed_s
        );
        out
    }
}

/// One pattern's table.
pub fn render_pattern(p: &PatternReport) -> String {
    let [measured, baseline, ratio] = &p.columns;
    let head = [
        "case",
        "metric",
        measured.as_str(),
        baseline.as_str(),
        ratio.as_str(),
        "target",
        "result",
    ];
    let mut cells: Vec<[String; 7]> = Vec::new();
    for r in &p.rows {
        cells.push([
            r.case.clone(),
            format!("{} ({})", r.metric, r.unit),
            r.framework.map_or("-".into(), |v| format_value(v, &r.unit)),
            r.raw.map_or("-".into(), |v| format_value(v, &r.unit)),
            r.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            if r.targets.is_empty() {
                "-".into()
            } else {
                r.targets
                    .iter()
                    .map(|t| t.describe(&r.unit))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            match r.verdict {
                Some(Verdict::Pass) => "PASS".into(),
                Some(Verdict::Fail) => "FAIL".into(),
                None => "-".into(),
            },
        ]);
    }
    let mut width = head.map(str::len);
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = format!("== {}: {} ({:.1} s)\n", p.name, p.title, p.elapsed_s);
    let line = |out: &mut String, row: &[String]| {
        for (i, c) in row.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if (2..=4).contains(&i) {
                let _ = write!(out, "{}{} ", " ".repeat(pad), c);
            } else {
                let _ = write!(out, "{}{} ", c, " ".repeat(pad));
            }
            if i + 1 < row.len() {
                out.push_str("| ");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &head.map(str::to_owned));
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    for r in &p.rows {
        if let Some(n) = &r.note {
            let _ = writeln!(out, "  * {} / {}: {n}", r.case, r.metric);
        }
    }
    for n in &p.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// A figure for the table: thousands separators for rates and counts, decimals for times.
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "us" | "ms" => {
            if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        }
        "MiB" => format!("{v:.2}"),
        _ => group(v.round() as u64),
    }
}

fn short_number(v: f64, unit: &str) -> String {
    match unit {
        "us" | "ms" | "MiB" => format!("{v}"),
        _ if v >= 1_000_000.0 => format!("{}M", v / 1_000_000.0),
        _ if v >= 1_000.0 => format!("{}k", v / 1_000.0),
        _ => format!("{v}"),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_verdicts() {
        let r = Row::new("c", "m", "msg/s")
            .fw(90.0)
            .raw(100.0)
            .target(Target::RatioAtLeast(0.8))
            .finish();
        assert_eq!(r.ratio, Some(0.9));
        assert_eq!(r.verdict, Some(Verdict::Pass));
        let r = Row::new("c", "m", "us")
            .fw(200.0)
            .raw(100.0)
            .target(Target::RatioAtMost(1.25))
            .finish();
        assert_eq!(r.verdict, Some(Verdict::Fail));
        let r = Row::new("c", "m", "MiB")
            .fw(None)
            .target(Target::AtMost(10.0))
            .finish();
        assert_eq!(r.verdict, None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(format_value(1234567.4, "msg/s"), "1,234,567");
        assert_eq!(format_value(999.0, "msg/s"), "999");
        assert_eq!(format_value(16.234, "us"), "16.2");
        assert_eq!(short_number(1_000_000.0, "msg/s"), "1M");
        assert_eq!(short_number(50_000.0, "req/s"), "50k");
    }
}
