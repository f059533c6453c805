use sf_bridge_macros::plugin;

#[derive(Default)]
pub struct Ticks;

#[plugin(name = "ticks")]
impl Ticks {
    #[on_request("/ticks", stream)]
    fn ticks(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }
}

fn main() {}
