// Pushing a value of another type than the pusher declares does not compile.
use service_framework::prelude::*;

#[derive(Serialize, JsonSchema)]
struct Job {
    n: i64,
}

const JOBS: Pusher<Job> = Pusher::new("jobs_out");

fn main() {
    let _ = ServiceDef::new("s").pusher(JOBS).main(|ctx: Ctx| async move {
        ctx.push(&JOBS, &"not a job").await?;
        Ok(())
    });
}
