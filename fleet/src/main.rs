//! `service-framework-up` (run as `service-framework up ...`):
//!
//! ```text
//! service-framework up [FILE]                 run the topology (default: topology.toml)
//! service-framework up --check [FILE]         check it, start nothing
//! service-framework up --run-dir DIR [FILE]   keep the generated files in DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: service-framework up [--check] [--run-dir DIR] [FILE]

Runs every service of a topology file (default: topology.toml): free local ports assigned,
each service's addresses.json and config.json written, services started consumers first
with their log lines prefixed by name, a status table (in place on a terminal, one line
per change when piped), crashed services restarted with backoff, and on Ctrl-C or SIGTERM
every service stopped gracefully, producers first (exit 0 when all stop cleanly).

  --check        check the file (services, edges, kinds, cycles) and print the plan; start
                 nothing (exit 0 when it is sound, 2 naming every mistake otherwise)
  --run-dir DIR  write the generated files to DIR and keep them (default: a temporary
                 directory removed at the end)
  -h, --help     this text
";

struct Args {
    file: PathBuf,
    check: bool,
    run_dir: Option<PathBuf>,
}

fn parse() -> Result<Option<Args>, String> {
    let mut args = std::env::args().skip(1).peekable();
    // `service-framework up ...` passes its arguments on, `up` included.
    if args.peek().map(String::as_str) == Some("up") {
        args.next();
    }
    let mut file = None;
    let mut check = false;
    let mut run_dir = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--check" => check = true,
            "--run-dir" => {
                run_dir = Some(PathBuf::from(
                    args.next().ok_or("--run-dir needs a directory")?,
                ))
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s:?}")),
            s => {
                if file.replace(PathBuf::from(s)).is_some() {
                    return Err("give one topology file".into());
                }
            }
        }
    }
    Ok(Some(Args {
        file: file.unwrap_or_else(|| "topology.toml".into()),
        check,
        run_dir,
    }))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("{USAGE}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let plan = match sf_fleet::load(&args.file).await {
            Ok(p) => p,
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                return ExitCode::from(2);
            }
        };
        if args.check {
            print!("{}", sf_fleet::summary(&plan));
            return ExitCode::SUCCESS;
        }
        match sf_fleet::supervise::up(
            plan,
            sf_fleet::supervise::UpOptions {
                run_dir: args.run_dir,
            },
        )
        .await
        {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}
