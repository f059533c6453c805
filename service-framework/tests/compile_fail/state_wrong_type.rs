// Writing an out-state with a value of another type, or a full state as a delta, does not
// compile.
use std::collections::BTreeMap;

use service_framework::prelude::*;

type Prices = BTreeMap<String, f64>;
const PRICES: FullStateOut<Prices> = FullStateOut::new("prices");

fn main() {
    let _ = ServiceDef::new("s").full_update_out(PRICES).main(|ctx: Ctx| async move {
        ctx.set_state(&PRICES, &vec![1, 2]).await?;
        ctx.update_state(&PRICES, &Prices::new()).await?;
        Ok(())
    });
}
