// Publishing on a requester (the wrong kind of connection) does not compile.
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
        ctx.publish(&ADDER, &Add { a: 1 }).await?;
        Ok(())
    });
}
