//! Runs one request/reply case on a current-thread runtime, for a profiler
//! (`valgrind --tool=callgrind target/release/examples/profile fw-rep 20000 [mt]`).
use sf_bench::reqrep::{
    fw_calls_as, fw_replyer, fw_service_thread, raw_calls, raw_calls_codec, raw_calls_tasks,
    raw_echo_thread, raw_router_codec, raw_router_echo,
};
use sf_bench::util::{block_on, Flavor};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "fw".into());
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let flavor = match args.next().as_deref() {
        Some("mt") => Flavor::Multi,
        _ => Flavor::Current,
    };
    let callers = 16;
    // SF_PROFILE_LOG=1: log as a service run by the CLI does (console at INFO).
    let _log = if std::env::var_os("SF_PROFILE_LOG").is_some() {
        Some(service_framework::logging::init(&Default::default())?)
    } else {
        None
    };
    let lim = Duration::from_secs(600);
    let r = match case.as_str() {
        "fw" => block_on(flavor, lim, async move {
            let rep = fw_replyer().await?;
            fw_calls_as(rep.endpoint().to_owned(), callers, n, 100, true).await
        }),
        "fw-req" => block_on(flavor, lim, async move {
            let ep = raw_router_echo().await?;
            fw_calls_as(ep, callers, n, 100, false).await
        }),
        "fw-rep" => block_on(flavor, lim, async move {
            let rep = fw_replyer().await?;
            raw_calls(rep.endpoint().to_owned(), callers, n, 100).await
        }),
        // The server on its own thread, as an embedded service runs.
        "svc" => {
            let (ep, handle) = fw_service_thread()?;
            let r = block_on(flavor, lim, async move {
                fw_calls_as(ep, callers, n, 100, true).await
            });
            let _ = handle.stop();
            r
        }
        "raw-thread" => {
            let (ep, _stop) = raw_echo_thread()?;
            block_on(
                flavor,
                lim,
                async move { raw_calls(ep, callers, n, 100).await },
            )
        }
        "pubsub" => {
            let d = block_on(flavor, lim, async move {
                sf_bench::pubsub::framework(n as u64, None, Duration::from_secs(2)).await
            })?;
            println!(
                "pubsub: {:.0} msg/s delivered, {} of {}",
                d.per_s, d.received, d.sent
            );
            return Ok(());
        }
        "push" | "raw-push" => {
            let fw = case == "push";
            let t = block_on(flavor, lim, async move {
                sf_bench::pipeline::one_hop(n as u64, fw, false, Duration::from_secs(2)).await
            })?;
            println!("{case}: {:.0} msg/s, {} of {}", t.per_s, t.received, t.sent);
            return Ok(());
        }
        "raw-codec" => block_on(flavor, lim, async move {
            let ep = raw_router_codec().await?;
            raw_calls_codec(ep, callers, n, 100).await
        }),
        "raw-tasks" => block_on(flavor, lim, async move {
            let ep = raw_router_echo().await?;
            raw_calls_tasks(ep, callers, n, 100).await
        }),
        _ => block_on(flavor, lim, async move {
            let ep = raw_router_echo().await?;
            raw_calls(ep, callers, n, 100).await
        }),
    }?;
    println!("{case}: {:.0} rt/s p50 {:.1} us", r.per_s, r.latency.p50_us);
    Ok(())
}
