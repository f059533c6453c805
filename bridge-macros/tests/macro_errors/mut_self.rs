use sf_bridge_macros::plugin;

#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[plugin(name = "counter")]
impl Counter {
    #[on_request("/count")]
    async fn count(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn main() {}
