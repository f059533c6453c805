// A typed request needs a handle: a bare name (a typo waiting to happen) does not compile.
// The dynamic form is `ctx.send(name, &json)`.
use service_framework::prelude::*;

fn main() {
    let _ = ServiceDef::new("s").main(|ctx: Ctx| async move {
        let _: i64 = ctx.request("adder", &1).await?;
        Ok(())
    });
}
