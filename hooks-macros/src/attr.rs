//! Parsing of the attribute's arguments: `session_end, priority = -5, timeout = "2s", name = "…", crate = path`.
//!
//! This module only reads the tokens into [`RawArgs`]; what the values mean (is the event known, is the
//! timeout well formed, is the priority in range) is checked in `valid`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, LitStr, Path, Token};

use crate::valid::Errors;

/// The options `#[hook(...)]` accepts, for "expected one of" messages.
pub(crate) const OPTIONS: &str = "`priority`, `timeout`, `name`, `crate`";

/// The attribute's arguments as written.
#[derive(Default)]
pub(crate) struct RawArgs {
    /// The event name (the one argument without `=`).
    pub(crate) event: Option<Ident>,
    /// `priority = <expr>`, the key and the value.
    pub(crate) priority: Option<(Ident, Expr)>,
    /// `timeout = <expr>`.
    pub(crate) timeout: Option<(Ident, Expr)>,
    /// `name = <expr>`.
    pub(crate) name: Option<(Ident, Expr)>,
    /// `crate = <path>`.
    pub(crate) krate: Option<(Ident, Path)>,
}

/// Reads the arguments, reporting every syntax problem it can recover from into `errors`.
///
/// # Errors
///
/// Only when the tokens are too broken to go on (then `errors` may hold more).
pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> syn::Result<RawArgs> {
    let parser = |input: ParseStream<'_>| parse_args(input, errors);
    let raw = parser.parse2(args)?;
    if raw.event.is_none() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing event: name the event this hook subscribes to, e.g. `#[hook(session_end)]`\n\
             = note: the events are: "
                .to_owned()
                + &crate::events::list(),
        ));
    }
    Ok(raw)
}

fn parse_args(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<RawArgs> {
    let mut raw = RawArgs::default();
    while !input.is_empty() {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            errors.push(syn::Error::new(
                lit.span(),
                format!("write the event as a bare name, without quotes: `#[hook({})]`", lit.value()),
            ));
            // Take it as the event anyway, so that a missing-event error does not follow.
            if raw.event.is_none() {
                raw.event = Some(syn::parse_str::<Ident>(&lit.value()).map_or_else(
                    |_| Ident::new("__unknown_event", lit.span()),
                    |ident| Ident::new(&ident.to_string(), lit.span()),
                ));
            }
        } else {
            let key = input.call(Ident::parse_any).map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected an event name (e.g. `session_end`) or an option, one of {OPTIONS}"),
                )
            })?;
            if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                parse_option(input, key, &mut raw, errors)?;
            } else if is_option(&key) {
                errors.push(syn::Error::new(
                    key.span(),
                    format!("the option `{key}` needs a value, e.g. {}", example(&key.to_string())),
                ));
            } else if input.peek(syn::token::Paren) || input.peek(Token![::]) || input.peek(Token![:]) {
                return Err(syn::Error::new(
                    input.span(),
                    "expected `,` or `=`: the event is a bare name like `session_end`, options are `key = value`",
                ));
            } else if let Some(first) = &raw.event {
                errors.push(syn::Error::new(
                    key.span(),
                    format!(
                        "a hook subscribes to one event, but `{first}` is already named here\n\
                         = help: write one function per event"
                    ),
                ));
            } else {
                raw.event = Some(key);
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `,` between the event and the options, e.g. `session_end, priority = 5`",
            )
        })?;
    }
    Ok(raw)
}

fn parse_option(input: ParseStream<'_>, key: Ident, raw: &mut RawArgs, errors: &mut Errors) -> syn::Result<()> {
    let name = key.unraw().to_string();
    let duplicate = |errors: &mut Errors| {
        errors.push(syn::Error::new(
            key.span(),
            format!("duplicate option `{name}`: it is already given earlier in this attribute; give it once"),
        ));
    };
    match name.as_str() {
        "crate" => {
            let path = input.call(Path::parse_mod_style).map_err(|e| {
                syn::Error::new(e.span(), "expected a path to hooks-core, e.g. `crate = my_hooks_core`")
            })?;
            match &raw.krate {
                Some(_) => duplicate(errors),
                None => raw.krate = Some((key, path)),
            }
        }
        "priority" | "timeout" | "name" => {
            let value: Expr = input.parse()?;
            let slot = match name.as_str() {
                "priority" => &mut raw.priority,
                "timeout" => &mut raw.timeout,
                _ => &mut raw.name,
            };
            match slot {
                Some(_) => duplicate(errors),
                None => *slot = Some((key, value)),
            }
        }
        _ => {
            // Skip the value so that the options after it are still read and checked.
            input.parse::<Expr>()?;
            errors.push(syn::Error::new(key.span(), format!("unknown option `{name}`: expected one of {OPTIONS}")));
        }
    }
    Ok(())
}

fn is_option(key: &Ident) -> bool {
    matches!(key.unraw().to_string().as_str(), "priority" | "timeout" | "name" | "crate")
}

fn example(key: &str) -> &'static str {
    match key {
        "priority" => "`priority = -10` (lower runs first)",
        "timeout" => "`timeout = \"5s\"`",
        "name" => "`name = \"memory_flush\"`",
        _ => "`crate = my_hooks_core`",
    }
}
