// Requesting with args of another type, or expecting another reply type, does not compile.
use service_framework::prelude::*;

#[derive(Serialize, JsonSchema)]
struct Add {
    a: i64,
}
#[derive(Deserialize, JsonSchema)]
struct Sum {
    total: i64,
}

const ADDER: Requester<Add, Sum> = Requester::new("adder");

fn main() {
    let _ = ServiceDef::new("s").requester(ADDER).main(|ctx: Ctx| async move {
        let _: Sum = ctx.request(&ADDER, &"one").await?;
        let _: String = ctx.request(&ADDER, &Add { a: 1 }).await?;
        Ok(())
    });
}
