//! The attribute macros' error messages (trybuild): a borrowed argument, `&mut self`, two
//! bodies, unknown options of #[on_request] and #[plugin], a stream handler that returns no
//! stream. The cases use this crate alone (every mistake is caught while expanding, before
//! any sf-bridge path is resolved), so trybuild's project depends on syn and quote only and
//! builds in seconds, not on sf-bridge's HTTP stack (trybuild keeps its own target folder).

#[test]
fn macro_mistakes_are_explained() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/macro_errors/*.rs");
}
