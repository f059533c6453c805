// Pushing needs a pusher: a publisher's handle does not compile there.
use service_framework::prelude::*;

#[derive(Serialize, JsonSchema)]
struct Job {
    n: i64,
}

const JOBS: Publisher<Job> = Publisher::new("jobs_out");

fn main() {
    let _ = ServiceDef::new("s").publisher(JOBS).main(|ctx: Ctx| async move {
        ctx.push(&JOBS, &Job { n: 1 }).await?;
        Ok(())
    });
}
