//! The UI suite of `#[hook]`: `ui/pass` must compile and run, `ui/fail` must fail to compile with
//! exactly the reviewed diagnostics in the `.stderr` files next to them.
//!
//! After changing the macro or the toolchain, regenerate with `TRYBUILD=overwrite cargo test -p
//! hooks-tests --test ui` and read every changed `.stderr`: each error must point at the offending token
//! and say what to write instead.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
