//! The `#[hook]` attribute of hooks-core. Depend on `hooks-core` and write `use hooks_core::prelude::*;`;
//! `docs/hooks.md` is the guide.
//!
//! The macro runs in four steps, one module each: `attr` reads the arguments, `valid` checks the
//! attribute and the function (every error spanned on the offending token) into the typed model of
//! `ast`, `expand` writes the registration, and `fallback` emits the user's function next to the
//! errors when something is wrong. `events` is the macro's one copy of the event catalogue.

use proc_macro::TokenStream;
use quote::ToTokens;

mod ast;
mod attr;
mod events;
mod expand;
mod fallback;
mod valid;

/// The attribute itself (this crate is an implementation detail of hooks-core: use `hooks_core::hook` or
/// `hooks_core::prelude::*`, whose documentation describes signatures and options; `docs/hooks.md`
/// explains every compile error).
#[proc_macro_attribute]
pub fn hook(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match hook_impl(args.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => fallback::emit(item, &error).into(),
    }
}

fn hook_impl(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let mut errors = valid::Errors::default();
    let raw = attr::parse(args, &mut errors);
    let func = match syn::parse2::<syn::Item>(item) {
        Ok(syn::Item::Fn(func)) => func,
        Ok(other) => {
            errors.push(not_a_function(&other));
            if let Err(e) = raw {
                errors.push(e);
            }
            errors.finish()?;
            unreachable!("an error was pushed");
        }
        Err(e) => return Err(e),
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(e);
            errors.finish()?;
            unreachable!("an error was pushed");
        }
    };
    let hook = valid::validate(raw, &func, errors)?;
    Ok(expand::expand(&hook))
}

fn not_a_function(item: &syn::Item) -> syn::Error {
    use syn::Item;
    fn head(keyword: &impl ToTokens, name: &impl ToTokens) -> proc_macro2::TokenStream {
        let mut tokens = keyword.to_token_stream();
        name.to_tokens(&mut tokens);
        tokens
    }
    let (what, tokens) = match item {
        Item::Struct(i) => ("a struct", head(&i.struct_token, &i.ident)),
        Item::Enum(i) => ("an enum", head(&i.enum_token, &i.ident)),
        Item::Union(i) => ("a union", head(&i.union_token, &i.ident)),
        Item::Impl(i) => ("an `impl` block", head(&i.impl_token, &i.self_ty)),
        Item::Trait(i) => ("a trait", head(&i.trait_token, &i.ident)),
        Item::Mod(i) => ("a module", head(&i.mod_token, &i.ident)),
        Item::Const(i) => ("a constant", head(&i.const_token, &i.ident)),
        Item::Static(i) => ("a static", head(&i.static_token, &i.ident)),
        Item::Type(i) => ("a type alias", head(&i.type_token, &i.ident)),
        Item::Use(i) => ("a `use` declaration", i.use_token.to_token_stream()),
        Item::ForeignMod(i) => ("an `extern` block", i.abi.to_token_stream()),
        Item::Macro(i) => ("a macro invocation", i.mac.path.to_token_stream()),
        other => ("this item", other.to_token_stream()),
    };
    syn::Error::new_spanned(
        tokens,
        format!(
            "`#[hook]` subscribes a function to an event, but this is {what}\n\
             = note: expected: `async fn name(ev: &SessionEnd)` or `fn name(ev: &SessionEnd, ctx: &HookContext)` \
             after `#[hook(session_end)]`"
        ),
    )
}
