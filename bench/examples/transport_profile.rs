//! Runs one case of the transport pattern alone, for a profiler:
//! `cargo build --release -p sf-bench --examples`, then e.g.
//! `valgrind --tool=callgrind target/release/examples/transport_profile zmtp push 100 200000`.
//! Libraries `zmtp`, `zeromq`; cases `rr1`, `rr16`, `pub`, `push`; add `mt` for a
//! multi-thread runtime (default current-thread: repeatable instruction counts).
use std::time::Duration;

use sf_bench::transport::{credit_stream, push_pull, round_trips, Lib, Zeromq, Zmtp};
use sf_bench::util::{block_on, Flavor};

fn case<L: Lib>(case: &str, size: usize, n: usize, flavor: Flavor) -> anyhow::Result<f64> {
    let lim = Duration::from_secs(600);
    let quiet = Duration::from_secs(2);
    let case = case.to_owned();
    block_on(flavor, lim, async move {
        Ok(match case.as_str() {
            "rr1" => round_trips::<L>(size, 1, n, 100).await?.per_s,
            "rr16" => round_trips::<L>(size, 16, n, 100).await?.per_s,
            "pub" => {
                credit_stream::<L>(n as u64, size, 50_000, quiet)
                    .await?
                    .per_s
            }
            "push" => push_pull::<L>(n as u64, size, quiet).await?.per_s,
            other => anyhow::bail!("unknown case {other:?}: rr1, rr16, pub, push"),
        })
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let (lib, which) = (arg(0, "zmtp"), arg(1, "push"));
    let size: usize = arg(2, "100").parse()?;
    let n: usize = arg(3, "200000").parse()?;
    let flavor = if arg(4, "") == "mt" {
        Flavor::Multi
    } else {
        Flavor::Current
    };
    let per_s = match lib.as_str() {
        "zmtp" => case::<Zmtp>(&which, size, n, flavor)?,
        "zeromq" => case::<Zeromq>(&which, size, n, flavor)?,
        other => anyhow::bail!("unknown library {other:?}: zmtp, zeromq"),
    };
    println!("{lib} {which} {size} B x {n}: {per_s:.0}/s");
    Ok(())
}
