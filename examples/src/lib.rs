//! The example services, as definitions that the binaries run and the tests embed.

pub mod echo;
