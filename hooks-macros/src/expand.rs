//! Code generation for a valid hook: the user's function unchanged, then a shim and its registration.
//!
//! ```text
//! #func
//! const _: () = {
//!     fn __hook_shim(ev, ctx) -> … { into_output(name(ev as &UserEventType, ctx as &UserContextType)) }
//!     ::hooks_core::__private::inventory::submit! { Hook::<SessionEnd>::new(HookMeta::new(…), Handler::…(__hook_shim)) }
//! };
//! ```
//!
//! Checks that need types are written as qualified paths spanned on the user's own tokens
//! (`<UserType as EventArg<SessionEnd>>::from_event(ev)`), so rustc's error lands under the user's
//! type, even through a type alias, and the call itself still type-checks (one error, no cascade).

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Type};

use crate::ast::{Hook, Timeout};

/// The function followed by its registration.
pub(crate) fn expand(hook: &Hook<'_>) -> TokenStream {
    let func = with_context_lifetime(hook.func);
    let p = match &hook.options.krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::hooks_core::__private),
    };
    let event_ty = format_ident!("{}", hook.event.ty, span = hook.event_span);
    let event_ty = quote!(#p::#event_ty);
    let event_name = hook.event.name;
    let hook_name = &hook.options.name;
    let priority = hook.options.priority;
    let timeout = match hook.options.timeout {
        Some(Timeout { secs, nanos }) => quote!(#p::Some(#p::Duration::new(#secs, #nanos))),
        None => quote!(#p::None),
    };

    // The shim's arguments, named with mixed-site hygiene: a hook function named `ev` or `ctx`
    // (spanned at the call site) still names the function, not the argument.
    let ev = Ident::new("ev", Span::mixed_site());
    let ctx = Ident::new("ctx", Span::mixed_site());
    let user_event = erase_lifetimes(&hook.sig.event_ty);
    let ev_arg = quote_spanned! {user_event.span()=>
        <#user_event as #p::EventArg<#event_ty>>::from_event(#ev)
    };
    let args = match &hook.sig.ctx_ty {
        Some(ctx_ty) => {
            let mut user_ctx = erase_lifetimes(ctx_ty);
            add_context_lifetime(&mut user_ctx);
            let ctx_arg = quote_spanned! {user_ctx.span()=>
                <#user_ctx as #p::ContextArg<'_>>::from_context(#ctx)
            };
            quote!(#ev_arg, #ctx_arg)
        }
        None => ev_arg,
    };
    let output = match &hook.sig.output {
        Some(ty) => erase_lifetimes(ty).into_token_stream(),
        None => quote!(()),
    };
    let into_output = quote_spanned! {output_span(hook)=>
        <#output as #p::HookOutput<#event_ty>>::into_output
    };

    let name = &func.sig.ident;
    let result = quote!(#p::Result<<#event_ty as #p::Event>::Output, #p::HookError>);
    let (kind, shim) = if hook.sig.is_async {
        // Boxing the future into `BoxFuture`, which is `Send`, is the one place a non-`Send` future is
        // reported; the tokens of that coercion carry the span of the function's name so that the
        // error lands there. The shim is lent the context for the call only: a function that takes
        // it gets a copy kept in the boxed future, which lends it to the user's; one that does not
        // gets a future without it (the context is ~80 bytes).
        let boxed = respan(quote!(#p::Box::pin), hook.sig.name_span);
        let (copy, lend) = match hook.sig.ctx_ty {
            Some(_) => (quote!(let #ctx = *#ctx;), quote!(let #ctx = &#ctx;)),
            None => (quote!(let _ = #ctx;), quote!()),
        };
        let call = quote_spanned! {hook.sig.name_span=>
            #boxed(async move {
                #lend
                #into_output(#name(#args).await)
            })
        };
        let shim = quote! {
            fn __hook_shim<'a>(#ev: &'a #event_ty, #ctx: &#p::HookContext<'a>) -> #p::BoxFuture<'a, #result> {
                #copy
                #call
            }
        };
        (quote!(Async), shim)
    } else {
        let body = quote!(#into_output(#name(#args)));
        let shim = quote! {
            fn __hook_shim(#ev: &#event_ty, #ctx: &#p::HookContext<'_>) -> #result {
                let _ = #ctx;
                #body
            }
        };
        (quote!(Sync), shim)
    };

    // A `#[cfg(...)]` on the function must remove its registration too.
    let cfgs = func.attrs.iter().filter(|a| a.path().is_ident("cfg"));

    quote! {
        #func

        #(#cfgs)*
        #[doc(hidden)]
        const _: () = {
            #shim

            #p::inventory::submit! {
                #p::Hook::<#event_ty>::new(
                    #p::HookMeta::new(
                        #event_name,
                        #hook_name,
                        ::core::module_path!(),
                        ::core::file!(),
                        ::core::line!(),
                        #priority,
                        #timeout,
                        #p::HandlerKind::#kind,
                    ),
                    #p::Handler::#kind(__hook_shim),
                )
            }
        };
    }
}

/// `func` with each argument of type `&HookContext` written `&HookContext<'_>`
/// ([`add_context_lifetime`]).
/// The fallback applies it too, so that a rejected hook gets only its own error.
pub(crate) fn with_context_lifetime(func: &syn::ItemFn) -> syn::ItemFn {
    let mut func = func.clone();
    for arg in &mut func.sig.inputs {
        if let FnArg::Typed(arg) = arg
            && let Type::Reference(reference) = &mut *arg.ty
        {
            add_context_lifetime(&mut reference.elem);
        }
    }
    func
}

/// Writes a bare `HookContext` as `HookContext<'_>`.
///
/// `HookContext` borrows the dispatcher's state, so it has a lifetime parameter; an `async fn` may not
/// leave it implicit (E0726) and `elided_lifetimes_in_paths` warns about a plain `fn` that does. Hooks
/// are documented as taking `ctx: &HookContext`, so the macro writes the `'_` the compiler wants; a
/// path with arguments of its own, or another type, is left as written.
fn add_context_lifetime(ty: &mut Type) {
    if let Type::Path(path) = ty
        && let Some(last) = path.path.segments.last_mut()
        && last.ident == "HookContext"
        && last.arguments.is_none()
    {
        last.arguments = syn::PathArguments::AngleBracketed(syn::parse_quote_spanned!(last.ident.span()=> <'_>));
    }
}

/// Where a wrong return type is reported: the return type, or the function's name when it has none.
fn output_span(hook: &Hook<'_>) -> Span {
    match &hook.sig.output {
        Some(ty) => ty.span(),
        None => hook.func.sig.ident.span(),
    }
}

/// `ty` with every named or elided lifetime replaced by `'_`, so that it can be written inside the shim,
/// where the function's own lifetime parameters are not in scope. Event types have no lifetimes, so this
/// never turns a wrong type into a right one.
fn erase_lifetimes(ty: &Type) -> Type {
    struct Erase;
    impl VisitMut for Erase {
        fn visit_lifetime_mut(&mut self, lifetime: &mut syn::Lifetime) {
            if lifetime.ident != "static" {
                *lifetime = syn::Lifetime::new("'_", lifetime.span());
            }
        }
        fn visit_type_reference_mut(&mut self, reference: &mut syn::TypeReference) {
            if reference.lifetime.is_none() {
                reference.lifetime = Some(syn::Lifetime::new("'_", reference.and_token.span));
            }
            syn::visit_mut::visit_type_reference_mut(self, reference);
        }
    }
    let mut ty = ty.clone();
    Erase.visit_type_mut(&mut ty);
    ty
}

/// `tokens` with every span set to `span`, so that rustc reports an obligation of the whole path there.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut inner = proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = proc_macro2::TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}
