//! What `#[hook]` emits when it rejects its input: the user's item plus the errors.
//!
//! Emitting the function keeps every call to it, and rust-analyzer, working, so the user sees the
//! hook's own error and not a cascade of "cannot find function" errors. The function gets
//! `#[allow(dead_code)]` (nothing calls it now that it is not registered) and loses a C-variadic `...`
//! (which rustc would reject a second time).

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

/// The item as written (see the module docs for the three touches), followed by `error`.
pub(crate) fn emit(item: TokenStream, error: &syn::Error) -> TokenStream {
    let mut out = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(func) => {
            let mut func = crate::expand::with_context_lifetime(&func);
            func.attrs.push(syn::parse_quote!(#[allow(dead_code)]));
            if func.sig.variadic.take().is_some() && func.sig.inputs.trailing_punct() {
                func.sig.inputs.pop_punct();
            }
            func.into_token_stream()
        }
        Err(_) => item,
    };
    let errors = error.to_compile_error();
    out.extend(quote!(#errors));
    out
}
