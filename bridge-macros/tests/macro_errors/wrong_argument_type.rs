use sf_bridge_macros::plugin;

#[derive(Default)]
pub struct Greeter;

#[plugin(name = "greeter")]
impl Greeter {
    #[on_request("/greet")]
    async fn greet(&self, name: &str) -> String {
        name.to_owned()
    }
}

fn main() {}
