// A replyer's handler must answer the reply type its handle declares.
use service_framework::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Add {
    a: i64,
}
#[derive(Serialize, JsonSchema)]
struct Sum {
    total: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");

fn main() {
    let _ = ServiceDef::new("s").replyer(ADD, |args, _ctx| async move { Ok(args.a) });
}
