// Publishing a value of another type than the publisher declares does not compile.
use service_framework::prelude::*;

#[derive(Serialize, JsonSchema)]
struct Sum {
    total: i64,
}

const SUMS: Publisher<Sum> = Publisher::new("sums_out");

fn main() {
    let _ = ServiceDef::new("s").publisher(SUMS).main(|ctx: Ctx| async move {
        ctx.publish(&SUMS, &"not a sum").await?;
        Ok(())
    });
}
