//! `service-framework-up` (run as `service-framework up ...`):
//!
//! ```text
//! service-framework up [FILE]                 run the topology (default: topology.toml)
//! service-framework up --check [FILE]         check it, start nothing
//! service-framework up --run-dir DIR [FILE]   keep the generated files in DIR
//! service-framework up --emit k8s DIR [FILE]  write Kubernetes manifests to DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: service-framework up [--check] [--run-dir DIR] [FILE]
       service-framework up --emit k8s DIR [--image IMAGE] [--python-image IMAGE] [FILE]

Runs every service of a topology file (default: topology.toml): free local ports assigned,
each service's addresses.json and config.json written, services started consumers first
with their log lines prefixed by name, a status table (in place on a terminal, one line
per change when piped), crashed services restarted with backoff, and on Ctrl-C or SIGTERM
every service stopped gracefully, producers first (exit 0 when all stop cleanly).

  --check        check the file (services, edges, kinds, cycles) and print the plan; start
                 nothing (exit 0 when it is sound, 2 naming every mistake otherwise)
  --run-dir DIR  write the generated files to DIR and keep them (default: a temporary
                 directory removed at the end)
  --emit k8s DIR write the topology as Kubernetes manifests to DIR instead of running it,
                 one JSON file per resource (`kubectl apply -f DIR`): per service a
                 ConfigMap (addresses.json, config.json), a Deployment (a Job for a main-mode
                 service that finishes), a Service when it binds; services reach each other
                 by their Service names
  --image IMAGE  the image with service-framework and every Rust service binary
                 (default: service-framework:latest)
  --python-image IMAGE
                 the image of Python 0.0.18 services, their modules in /app
                 (default: service-framework-python:latest)
  -h, --help     this text
";

struct Args {
    file: PathBuf,
    check: bool,
    run_dir: Option<PathBuf>,
    /// `--emit k8s DIR`: the directory.
    emit_k8s: Option<PathBuf>,
    k8s: sf_fleet::k8s::K8sOptions,
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
    let mut emit_k8s = None;
    let mut image = None;
    let mut python_image = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--check" => check = true,
            "--run-dir" => {
                run_dir = Some(PathBuf::from(
                    args.next().ok_or("--run-dir needs a directory")?,
                ))
            }
            "--emit" => {
                let kind = args.next().ok_or("--emit needs a kind: --emit k8s DIR")?;
                if kind != "k8s" {
                    return Err(format!(
                        "--emit {kind:?}: unknown kind of output (there is k8s: --emit k8s DIR)"
                    ));
                }
                emit_k8s = Some(PathBuf::from(
                    args.next().ok_or("--emit k8s needs a directory")?,
                ));
            }
            "--image" => image = Some(args.next().ok_or("--image needs an image")?),
            "--python-image" => {
                python_image = Some(args.next().ok_or("--python-image needs an image")?)
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s:?}")),
            s => {
                if file.replace(PathBuf::from(s)).is_some() {
                    return Err("give one topology file".into());
                }
            }
        }
    }
    if emit_k8s.is_none() && (image.is_some() || python_image.is_some()) {
        return Err("--image and --python-image are for --emit k8s DIR".into());
    }
    if emit_k8s.is_some() && (check || run_dir.is_some()) {
        return Err(
            "--emit writes manifests and runs nothing: leave out --check and --run-dir".into(),
        );
    }
    let defaults = sf_fleet::k8s::K8sOptions::default();
    Ok(Some(Args {
        file: file.unwrap_or_else(|| "topology.toml".into()),
        check,
        run_dir,
        emit_k8s,
        k8s: sf_fleet::k8s::K8sOptions {
            image: image.unwrap_or(defaults.image),
            python_image: python_image.unwrap_or(defaults.python_image),
        },
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
        if let Some(dir) = &args.emit_k8s {
            return match sf_fleet::k8s::emit(&plan, &args.k8s, dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for line in e.lines() {
                        eprintln!("error: {line}");
                    }
                    ExitCode::from(1)
                }
            };
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
