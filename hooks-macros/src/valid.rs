//! Every semantic check of `#[hook]`, each error spanned on the token that is wrong.
//!
//! Checks that need types (is the argument really `&SessionEnd`, does the return type convert, is the
//! future `Send`) cannot be done on tokens; `expand` emits them as trait bounds spanned on the user's
//! own types, and the traits in `hooks_core::macro_support` carry the messages.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Expr, FnArg, GenericParam, ItemFn, Lit, PathArguments, ReturnType, Type, UnOp, WherePredicate};

use crate::ast::{Hook, HookSig, Options, Timeout};
use crate::attr::RawArgs;
use crate::events::{self, EventInfo};

/// Collects errors so that one run reports every independent mistake at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// `Err` with every error pushed, if any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// An error with a note on the following line, the way rustc prints its own notes.
pub(crate) fn error(span: Span, message: impl std::fmt::Display, note: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, format!("{message}\n= note: {note}"))
}

/// The accepted signatures for `event` (or any event, if the name is unknown).
pub(crate) fn expected_signature(event: Option<&EventInfo>, is_async: bool) -> String {
    let ty = event.map_or("SessionEnd", |e| e.ty);
    let kw = if is_async { "async fn" } else { "fn" };
    format!("expected: `{kw} name(ev: &{ty})` or `{kw} name(ev: &{ty}, ctx: &HookContext)`")
}

fn expected_output(event: Option<&EventInfo>) -> String {
    match event.and_then(|e| e.decision.map(|d| (e, d))) {
        Some((e, d)) => format!(
            "a `{}` hook returns `()`, `Result<(), E>`, `{d}` or `Result<{d}, E>` (with `E: Into<HookError>`)",
            e.name
        ),
        None => "a hook returns `()` or `Result<(), E>` (with `E: Into<HookError>`)".to_owned(),
    }
}

/// Checks the attribute and the function; the model of a valid hook, or every error found.
pub(crate) fn validate<'a>(raw: RawArgs, func: &'a ItemFn, mut errors: Errors) -> syn::Result<Hook<'a>> {
    let event = raw.event.as_ref().and_then(|ident| check_event(ident, &mut errors));
    let options = check_options(&raw, func, &mut errors);
    let sig = check_signature(func, event, &mut errors);
    errors.finish()?;
    match (event, raw.event, sig) {
        (Some(event), Some(ident), Some(sig)) => Ok(Hook { func, event, event_span: ident.span(), options, sig }),
        // Every `None` above pushed an error, so `finish` returned it.
        _ => Err(syn::Error::new(Span::call_site(), "invalid `#[hook]`")),
    }
}

fn check_event(ident: &syn::Ident, errors: &mut Errors) -> Option<&'static EventInfo> {
    let name = ident.to_string();
    if let Some(info) = events::by_name(&name) {
        return Some(info);
    }
    let list = events::list();
    let message = if let Some(info) = events::by_type(&name) {
        format!("unknown event `{name}`: events are named in snake_case here\n= help: did you mean `{}`?", info.name)
    } else if let Some(close) = events::suggest(&name) {
        format!("unknown event `{name}`\n= help: did you mean `{close}`?")
    } else {
        format!("unknown event `{name}`")
    };
    errors.push(error(ident.span(), message, format!("the events are: {list}")));
    None
}

fn check_options(raw: &RawArgs, func: &ItemFn, errors: &mut Errors) -> Options {
    let priority = raw.priority.as_ref().and_then(|(_, value)| match priority(value) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(e);
            None
        }
    });
    let timeout = raw.timeout.as_ref().and_then(|(_, value)| {
        let Some(lit) = str_literal(value) else {
            errors.push(error(
                value.span(),
                "`timeout` takes a string literal",
                "write it like `timeout = \"500ms\"`, `\"5s\"`, `\"2m\"` or `\"1h\"`",
            ));
            return None;
        };
        match parse_duration(&lit.value()) {
            Ok(t) => Some(t),
            Err(why) => {
                errors.push(error(
                    lit.span(),
                    format!("malformed timeout {}: {why}", lit.to_token_stream()),
                    "write a number and a unit, like `\"500ms\"`, `\"5s\"`, `\"2m\"`, `\"1h\"`, `\"1d\"` or `\"1m30s\"`",
                ));
                None
            }
        }
    });
    let name = match &raw.name {
        Some((_, value)) => match str_literal(value) {
            Some(lit) if valid_name(&lit.value()) => lit.value(),
            Some(lit) => {
                errors.push(error(
                    lit.span(),
                    "a hook name must be non-empty and contain no whitespace or `::`",
                    "the name appears in logs and in `Registry::require`, e.g. `name = \"memory_flush\"`",
                ));
                String::new()
            }
            None => {
                errors.push(error(value.span(), "`name` takes a string literal", "e.g. `name = \"memory_flush\"`"));
                String::new()
            }
        },
        None => func.sig.ident.unraw_string(),
    };
    Options { priority: priority.unwrap_or(0), timeout, name, krate: raw.krate.as_ref().map(|(_, path)| path.clone()) }
}

trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for syn::Ident {
    fn unraw_string(&self) -> String {
        syn::ext::IdentExt::unraw(self).to_string()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains("::")
}

fn str_literal(value: &Expr) -> Option<&syn::LitStr> {
    match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Some(s),
        _ => None,
    }
}

fn priority(value: &Expr) -> syn::Result<i32> {
    let (negative, lit) = match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) => (false, i),
        Expr::Unary(syn::ExprUnary { op: UnOp::Neg(_), expr, .. }) => match &**expr {
            Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) => (true, i),
            _ => return Err(priority_error(value)),
        },
        _ => return Err(priority_error(value)),
    };
    if !matches!(lit.suffix(), "" | "i32") {
        return Err(priority_error(value));
    }
    let magnitude: i64 = lit.base10_parse().map_err(|_| priority_error(value))?;
    let n = if negative { -magnitude } else { magnitude };
    i32::try_from(n).map_err(|_| {
        error(
            value.span(),
            format!("priority {n} is out of range"),
            "the priority is an `i32`: between -2147483648 and 2147483647",
        )
    })
}

fn priority_error(value: &Expr) -> syn::Error {
    error(
        value.span(),
        "`priority` takes an integer literal",
        "write it like `priority = 10` or `priority = -5`; hooks run in ascending priority (default 0)",
    )
}

/// Parses a timeout as the CLI parses its durations (`humantime`): `500ms`, `5s`, `2m`, `1h`, `1d`,
/// `1m30s`, `5 seconds`, …; zero is refused.
pub(crate) fn parse_duration(text: &str) -> Result<Timeout, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("a timeout of zero would cancel every call".to_owned());
    }
    Ok(Timeout { secs: duration.as_secs(), nanos: duration.subsec_nanos() })
}

fn check_signature(func: &ItemFn, event: Option<&'static EventInfo>, errors: &mut Errors) -> Option<HookSig> {
    let sig = &func.sig;
    let is_async = sig.asyncness.is_some();
    let note = expected_signature(event, is_async);
    let mut failed = false;
    let mut fail = |e: syn::Error| {
        failed = true;
        errors.push(e);
    };

    if let Some(kw) = &sig.constness {
        fail(error(kw.span, "a hook cannot be a `const fn`: remove `const`", &note));
    }
    if let Some(kw) = &sig.unsafety {
        fail(error(
            kw.span,
            "a hook cannot be an `unsafe fn`: the dispatcher calls it like a safe function; remove `unsafe` \
             and use an `unsafe` block inside",
            &note,
        ));
    }
    if let Some(abi) = &sig.abi {
        fail(syn::Error::new_spanned(
            abi,
            format!(
                "a hook cannot be an `extern` function: remove `{}`; hooks use the Rust ABI\n= note: {note}",
                abi.to_token_stream()
            ),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        fail(syn::Error::new_spanned(
            variadic.dots,
            format!("a hook cannot be variadic: remove `...`\n= note: {note}"),
        ));
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(t) => fail(error(
                t.ident.span(),
                format!("a hook cannot be generic: remove the type parameter `{}`", t.ident),
                format!("the event type is fixed by the attribute; {note}"),
            )),
            GenericParam::Const(c) => fail(error(
                c.const_token.span,
                format!("a hook cannot have const generics: remove `const {}`", c.ident),
                &note,
            )),
        }
    }
    if let Some(clause) = &sig.generics.where_clause {
        for predicate in &clause.predicates {
            if let WherePredicate::Type(p) = predicate {
                fail(syn::Error::new_spanned(
                    p,
                    format!(
                        "a hook cannot have `where` bounds on types: remove `{}`\n= note: {note}",
                        p.to_token_stream()
                    ),
                ));
            }
        }
    }

    let mut args = sig.inputs.iter();
    let mut event_ty = None;
    let mut ctx_ty = None;
    match args.next() {
        None => fail(error(
            sig.paren_token.span.join(),
            "a hook takes the event as its first argument, found no arguments",
            &note,
        )),
        Some(FnArg::Receiver(r)) => fail(receiver_error(r, &note)),
        Some(FnArg::Typed(first)) => {
            event_ty = borrowed(&first.ty, "event", event.map_or("SessionEnd", |e| e.ty), &note, &mut fail)
        }
    }
    match args.next() {
        None => {}
        Some(FnArg::Receiver(r)) => fail(receiver_error(r, &note)),
        Some(FnArg::Typed(second)) => ctx_ty = borrowed(&second.ty, "context", "HookContext", &note, &mut fail),
    }
    let extra: Vec<&FnArg> = args.collect();
    if !extra.is_empty() {
        let tokens = extra.iter().map(|a| a.to_token_stream()).collect::<proc_macro2::TokenStream>();
        fail(syn::Error::new_spanned(
            tokens,
            format!("a hook takes one or two arguments, found {}\n= note: {note}", sig.inputs.len()),
        ));
    }
    if let (Some(ev), Some(ctx)) = (&event_ty, &ctx_ty)
        && last_segment(ev).as_deref() == Some("HookContext")
        && event.is_some_and(|e| last_segment(ctx).as_deref() == Some(e.ty))
    {
        fail(syn::Error::new_spanned(
            &sig.inputs,
            format!("the arguments are swapped: the event comes first, the context second\n= note: {note}"),
        ));
    }

    let output = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => {
            if let Some(span) = impl_trait_span(ty) {
                fail(error(span, "a hook cannot return `impl Trait`: name the return type", expected_output(event)));
            } else if let (Some(event), Some(decision)) = (event, decision_in(ty))
                && event.decision != Some(decision.as_str())
            {
                fail(error(
                    ty.span(),
                    format!("`{}` is an observer event: its hooks cannot return `{decision}`", event.name),
                    format!("only decision events (`command`) may return a decision; {}", expected_output(Some(event))),
                ));
            }
            Some((**ty).clone())
        }
    };

    if failed {
        return None;
    }
    Some(HookSig { is_async, name_span: sig.ident.span(), event_ty: event_ty?, ctx_ty, output })
}

fn receiver_error(r: &syn::Receiver, note: &str) -> syn::Error {
    syn::Error::new_spanned(
        r,
        format!(
            "a hook cannot take `self`: hooks are free functions, registered at link time with no value to be \
             called on\n= help: move it out of the `impl` block and take the event as first argument\n= note: {note}"
        ),
    )
}

/// The type behind `&` of an argument, or an error if the argument is not a shared reference.
fn borrowed(ty: &Type, what: &str, expected: &str, note: &str, fail: &mut impl FnMut(syn::Error)) -> Option<Type> {
    if let Some(span) = impl_trait_span(ty) {
        fail(error(span, format!("a hook cannot take `impl Trait` as its {what}: write `&{expected}`"), note));
        return None;
    }
    match ty {
        Type::Reference(r) if r.mutability.is_some() => {
            fail(syn::Error::new_spanned(
                ty,
                format!("the {what} is shared between hooks: take `&{expected}`, not `&mut`\n= note: {note}"),
            ));
            None
        }
        Type::Reference(r) => Some((*r.elem).clone()),
        Type::Paren(p) => borrowed(&p.elem, what, expected, note, fail),
        _ => {
            fail(syn::Error::new_spanned(
                ty,
                format!(
                    "a hook borrows its {what}: write `&{}`\n= note: {note}",
                    ty.to_token_stream().to_string().replace(" :: ", "::")
                ),
            ));
            None
        }
    }
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// The decision type a return type names, bare or as `Result<Decision, _>`.
fn decision_in(ty: &Type) -> Option<String> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let name = last.ident.to_string();
    if events::decision_types().any(|d| d == name) {
        return Some(name);
    }
    if name == "Result"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(ok)) = args.args.first()
    {
        return decision_in(ok);
    }
    None
}

/// The span of the first `impl Trait` inside `ty`.
fn impl_trait_span(ty: &Type) -> Option<Span> {
    struct Find(Option<Span>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_impl_trait(&mut self, i: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(i.impl_token.span);
        }
    }
    let mut find = Find(None);
    find.visit_type(ty);
    find.0
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use crate::ast::Timeout;
    use crate::events;

    fn t(secs: u64, nanos: u32) -> Result<Timeout, String> {
        Ok(Timeout { secs, nanos })
    }

    #[test]
    fn timeouts_in_humantime_short_forms_parse_at_compile_time() {
        assert_eq!(parse_duration("500ms"), t(0, 500_000_000));
        assert_eq!(parse_duration("5s"), t(5, 0));
        assert_eq!(parse_duration("2m"), t(120, 0));
        assert_eq!(parse_duration("1h"), t(3600, 0));
        assert_eq!(parse_duration("1m 30s"), t(90, 0));
        assert_eq!(parse_duration("1s500ms"), t(1, 500_000_000));
        // The units the CLI's flags take (humantime), days and long names included.
        assert_eq!(parse_duration("1d"), t(86_400, 0));
        assert_eq!(parse_duration("5 seconds"), t(5, 0));
    }

    #[test]
    fn malformed_timeouts_say_what_is_wrong() {
        assert!(parse_duration("30").unwrap_err().contains("unit needed"));
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("0s"), Err("a timeout of zero would cancel every call".to_owned()));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown time unit \"parsecs\""));
        assert!(parse_duration("s5").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn typos_get_the_closest_event_and_far_names_get_none() {
        assert_eq!(events::suggest("sesion_end"), Some("session_end"));
        assert_eq!(events::suggest("session_ended"), Some("session_end"));
        assert_eq!(events::suggest("comand"), Some("command"));
        assert_eq!(events::suggest("on_everything"), None);
    }
}
