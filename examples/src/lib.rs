//! The example services, as definitions that the binaries run and the tests embed.

pub mod dynamic;
pub mod echo;
pub mod full_state;
pub mod order_book;
pub mod pipeline;
pub mod slow;
pub mod state_mirror;
pub mod ticks;
