use sf_bridge_macros::plugin;

#[derive(Default)]
pub struct Greeter;

#[plugin(name = "greeter", versoin = "1.0")]
impl Greeter {
    #[on_request("/greet")]
    async fn greet(&self, name: String) -> String {
        name
    }
}

fn main() {}
