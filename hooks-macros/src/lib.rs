//! The `#[hook]` attribute of hooks-core. Depend on `hooks-core` and write `use hooks_core::prelude::*;`.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{ItemFn, parse_macro_input};

/// Subscribes a function to an event. See hooks-core's docs.
#[proc_macro_attribute]
pub fn hook(args: TokenStream, item: TokenStream) -> TokenStream {
    let event = parse_macro_input!(args as syn::Ident);
    let func = parse_macro_input!(item as ItemFn);
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let event_str = event.to_string();
    let ty = format_ident!(
        "{}",
        event_str
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
            })
            .collect::<String>()
    );
    let p = quote!(::hooks_core::__private);
    let with_ctx = func.sig.inputs.len() == 2;
    let call_args = if with_ctx { quote!(ev, ctx) } else { quote!(ev) };
    let (kind, handler) = if func.sig.asyncness.is_some() {
        (
            quote!(Async),
            quote! {
                fn __shim<'a>(ev: &'a #p::#ty, ctx: &'a #p::HookContext) -> #p::BoxFuture<'a, #p::Result<<#p::#ty as #p::Event>::Output, #p::HookError>> {
                    let _ = ctx;
                    #p::Box::pin(async move { #p::HookOutput::<#p::#ty>::into_output(#name(#call_args).await) })
                }
            },
        )
    } else {
        (
            quote!(Sync),
            quote! {
                fn __shim(ev: &#p::#ty, ctx: &#p::HookContext) -> #p::Result<<#p::#ty as #p::Event>::Output, #p::HookError> {
                    let _ = ctx;
                    #p::HookOutput::<#p::#ty>::into_output(#name(#call_args))
                }
            },
        )
    };
    quote! {
        #func
        const _: () = {
            #handler
            #p::inventory::submit! {
                #p::Hook::<#p::#ty>::new(
                    #p::HookMeta::new(#event_str, #name_str, ::core::module_path!(), ::core::file!(), ::core::line!(), 0, #p::None, #p::HandlerKind::#kind),
                    #p::Handler::#kind(__shim),
                )
            }
        };
    }
    .into()
}
