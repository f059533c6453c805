use sf_bridge_macros::plugin;

pub struct Order {
    pub sku: String,
}

pub struct Note {
    pub text: String,
}

#[derive(Default)]
pub struct Orders;

#[plugin(name = "orders")]
impl Orders {
    #[on_request("/orders", methods = ["POST"])]
    async fn place(&self, order: Order, note: Note) -> String {
        format!("{} {}", order.sku, note.text)
    }
}

fn main() {}
