use sf_bridge_macros::plugin;

#[derive(Default)]
pub struct Greeter;

#[plugin(name = "greeter")]
impl Greeter {
    #[on_request("/greet", method = ["POST"])]
    async fn greet(&self, name: String) -> String {
        name
    }
}

fn main() {}
