//! Mistakes that typed handles turn into compile errors (trybuild).

#[test]
fn mistakes_with_handles_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
