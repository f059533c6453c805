// Publishing needs the publisher's handle: the topic (or the connection's name) as a string
// does not compile, so it cannot fail at run time with `not_found`.
use service_framework::prelude::*;

#[derive(Serialize, JsonSchema)]
struct Sum {
    total: i64,
}

const SUMS: Publisher<Sum> = Publisher::new("sums_out").topic("sums");

fn main() {
    let _ = ServiceDef::new("s").publisher(SUMS).main(|ctx: Ctx| async move {
        ctx.publish("sums", &Sum { total: 1 }).await?;
        Ok(())
    });
}
