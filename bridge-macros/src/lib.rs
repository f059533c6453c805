//! The bridge's attribute macros, re-exported by `sf-bridge` (use them from there):
//!
//! - `#[plugin(name = "..", version, description, author, url, config = Type,
//!   required_remote_apis = [..], type_name = "..", typed = false)]` on an impl block: the
//!   block is a FrameX plugin. Its type is the plugin's state, made once at start by its
//!   `fn new(config: Config) -> Self` (or `-> Result<Self, E>`, or `fn new() -> Self`, or
//!   `Default`); an `async fn on_start(&self, ctx: &PluginCtx)` is the start hook.
//! - `#[on_request("/path", methods = ["GET"], call_type = "http", stream, raw_response,
//!   tags = [".."], summary = "..", idempotent)]` on a method: an API (`idempotent`: a call
//!   whose worker died may run again on another, where its plugin runs on workers). Its
//!   arguments are query parameters (scalars, `Option`s and `Vec`s of them;
//!   `#[default(expr)]` gives a default), at most one body (any other type; `#[body]` /
//!   `#[query]` say which explicitly) and optionally the `PluginCtx`. A stream returns
//!   `impl Stream<Item = T>` (or a `Result` of one), each item a `message_chunk` event (`T`
//!   may be a `StreamEvent`, or a `Result`).
//! - `#[model]` on a struct or enum: serde's and schemars' derives through sf-bridge's
//!   re-exports, with no direct dependency on either crate.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprArray, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Lit,
    LitStr, Pat, PathArguments, ReturnType, Token, Type, TypeParamBound,
};

const PLUGIN_OPTIONS: &str =
    "name, version, description, author, url, config, required_remote_apis, type_name, typed, api_vis";
const ON_REQUEST_OPTIONS: &str =
    "path, methods, call_type, stream, raw_response, tags, summary, idempotent";
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

/// Declares a plugin on an impl block (see the crate docs).
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_plugin(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Marks an API inside a `#[plugin]` impl block; on its own it is an error.
#[proc_macro_attribute]
pub fn on_request(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    let e = syn::Error::new(
        Span::call_site(),
        "#[on_request] belongs on a method of an impl block marked #[plugin(...)]",
    )
    .to_compile_error();
    quote!(#e #item).into()
}

/// `Debug`, and serde's `Serialize`, `Deserialize` and schemars' `JsonSchema` derives through
/// sf-bridge (or those of the three named: `#[model(Deserialize, JsonSchema)]`).
#[proc_macro_attribute]
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_model(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_model(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let names: Punctuated<Ident, Token![,]> =
        syn::parse::Parser::parse2(Punctuated::parse_terminated, attr)?;
    let mut derives = Vec::new();
    let mut serde = false;
    let mut schemars = false;
    let all = names.is_empty();
    for n in ["Serialize", "Deserialize", "JsonSchema"] {
        if all || names.iter().any(|i| i == n) {
            let i = Ident::new(n, Span::call_site());
            if n == "JsonSchema" {
                schemars = true;
                derives.push(quote!(::sf_bridge::schemars::#i));
            } else {
                serde = true;
                derives.push(quote!(::sf_bridge::serde::#i));
            }
        }
    }
    if let Some(bad) = names
        .iter()
        .find(|i| !["Serialize", "Deserialize", "JsonSchema"].contains(&i.to_string().as_str()))
    {
        return Err(syn::Error::new(
            bad.span(),
            format!("#[model] derives Serialize, Deserialize and JsonSchema; `{bad}` is not one of them"),
        ));
    }
    let serde_attr = serde.then(|| quote!(#[serde(crate = "::sf_bridge::serde")]));
    let schemars_attr = schemars.then(|| quote!(#[schemars(crate = "::sf_bridge::schemars")]));
    Ok(quote! {
        #[derive(::core::fmt::Debug, #(#derives),*)]
        #serde_attr
        #schemars_attr
        #item
    })
}

/// `#[plugin(...)]`'s options.
#[derive(Default)]
struct PluginArgs {
    name: Option<LitStr>,
    version: Option<LitStr>,
    description: Option<LitStr>,
    author: Option<LitStr>,
    url: Option<LitStr>,
    config: Option<Type>,
    required: Vec<Expr>,
    type_name: Option<LitStr>,
    typed: bool,
    /// The visibility of the typed-call structs and their module: `pub` (the default),
    /// `pub(crate)`, or private (`""`: for models that are private to the module).
    api_vis: Option<LitStr>,
}

fn parse_plugin_args(attr: TokenStream2) -> syn::Result<PluginArgs> {
    let mut a = PluginArgs {
        typed: true,
        ..Default::default()
    };
    let parser = syn::meta::parser(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match key.as_str() {
            "name" => a.name = Some(meta.value()?.parse()?),
            "version" => a.version = Some(meta.value()?.parse()?),
            "description" => a.description = Some(meta.value()?.parse()?),
            "author" => a.author = Some(meta.value()?.parse()?),
            "url" => a.url = Some(meta.value()?.parse()?),
            "config" => a.config = Some(meta.value()?.parse()?),
            "type_name" => a.type_name = Some(meta.value()?.parse()?),
            "typed" => a.typed = meta.value()?.parse::<syn::LitBool>()?.value,
            "api_vis" => {
                let v: LitStr = meta.value()?.parse()?;
                if !["pub", "pub(crate)", ""].contains(&v.value().replace(' ', "").as_str()) {
                    return Err(syn::Error::new(
                        v.span(),
                        "api_vis is \"pub\", \"pub(crate)\" or \"\" (private to the module)",
                    ));
                }
                a.api_vis = Some(v);
            }
            "required_remote_apis" => {
                let arr: ExprArray = meta.value()?.parse()?;
                a.required = arr.elems.into_iter().collect();
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown option `{}` in #[plugin]; the options are {PLUGIN_OPTIONS}",
                    meta.path.to_token_stream()
                )))
            }
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(a)
}

/// `#[on_request(...)]`'s options.
#[derive(Default)]
struct OnRequest {
    path: Option<LitStr>,
    methods: Vec<LitStr>,
    call_type: Option<(String, Span)>,
    stream: bool,
    raw_response: bool,
    tags: Vec<LitStr>,
    summary: Option<LitStr>,
    idempotent: bool,
}

fn flag(input: ParseStream) -> syn::Result<bool> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(input.parse::<syn::LitBool>()?.value)
    } else {
        Ok(true)
    }
}

fn str_list(input: ParseStream) -> syn::Result<Vec<LitStr>> {
    input.parse::<Token![=]>()?;
    let arr: ExprArray = input.parse()?;
    arr.elems
        .into_iter()
        .map(|e| match e {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => Ok(s),
            other => Err(syn::Error::new(other.span(), "expected a string literal")),
        })
        .collect()
}

impl Parse for OnRequest {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut r = OnRequest::default();
        if input.peek(LitStr) {
            r.path = Some(input.parse()?);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        while !input.is_empty() {
            let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
            match key.to_string().as_str() {
                "path" => {
                    input.parse::<Token![=]>()?;
                    r.path = Some(input.parse()?);
                }
                "methods" => {
                    r.methods = str_list(input)?;
                    for m in &r.methods {
                        if !METHODS.contains(&m.value().to_ascii_uppercase().as_str()) {
                            return Err(syn::Error::new(
                                m.span(),
                                format!(
                                    "`{}` is not an HTTP method; use one of {}",
                                    m.value(),
                                    METHODS.join(", ")
                                ),
                            ));
                        }
                    }
                    if r.methods.is_empty() {
                        return Err(syn::Error::new(key.span(), "methods needs at least one method"));
                    }
                }
                "call_type" => {
                    input.parse::<Token![=]>()?;
                    let (v, span) = if input.peek(LitStr) {
                        let s: LitStr = input.parse()?;
                        (s.value(), s.span())
                    } else {
                        let i: Ident = input.parse()?;
                        (i.to_string(), i.span())
                    };
                    let v = v.to_ascii_lowercase();
                    if !["http", "func", "all"].contains(&v.as_str()) {
                        return Err(syn::Error::new(
                            span,
                            "call_type is \"http\", \"func\" or \"all\"",
                        ));
                    }
                    r.call_type = Some((v, span));
                }
                "stream" => r.stream = flag(input)?,
                "raw_response" => r.raw_response = flag(input)?,
                "idempotent" => r.idempotent = flag(input)?,
                "tags" => r.tags = str_list(input)?,
                "summary" => {
                    input.parse::<Token![=]>()?;
                    r.summary = Some(input.parse()?);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown option `{other}` in #[on_request]; the options are {ON_REQUEST_OPTIONS}"
                        ),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(r)
    }
}

fn is_attr(a: &Attribute, name: &str) -> bool {
    a.path().segments.last().is_some_and(|s| s.ident == name)
}

fn last_ident(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) => p.path.segments.last(),
        Type::Group(g) => last_ident(&g.elem),
        Type::Paren(p) => last_ident(&p.elem),
        _ => None,
    }
}

fn first_type_arg(seg: &syn::PathSegment) -> Option<&Type> {
    match &seg.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// Scalars, and `Option`s and `Vec`s of them, are query parameters; anything else is a body.
fn is_scalar(ty: &Type) -> bool {
    let Some(seg) = last_ident(ty) else {
        return false;
    };
    let name = seg.ident.to_string();
    match name.as_str() {
        "String" | "bool" | "char" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8"
        | "u16" | "u32" | "u64" | "u128" | "usize" | "f32" | "f64" => true,
        "Option" | "Vec" => first_type_arg(seg).is_some_and(is_scalar),
        _ => false,
    }
}

fn is_result(ty: &Type) -> bool {
    last_ident(ty).is_some_and(|s| s.ident == "Result")
}

fn is_ctx(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        t => t,
    };
    last_ident(ty).is_some_and(|s| s.ident == "PluginCtx")
}

/// The `Item` of a returned stream: `impl Stream<Item = T>`, `BoxStream<'_, T>`, or inside
/// a `Result`/`Pin<Box<dyn ..>>`.
fn stream_item(ty: &Type) -> Option<Type> {
    match ty {
        Type::ImplTrait(t) => bounds_item(t.bounds.iter()),
        Type::TraitObject(t) => bounds_item(t.bounds.iter()),
        Type::Paren(p) => stream_item(&p.elem),
        Type::Group(g) => stream_item(&g.elem),
        Type::Path(p) => {
            let seg = p.path.segments.last()?;
            if seg.ident == "BoxStream" || seg.ident == "LocalBoxStream" {
                return first_type_arg(seg).cloned();
            }
            first_type_arg(seg).and_then(stream_item)
        }
        _ => None,
    }
}

fn bounds_item<'a>(bounds: impl Iterator<Item = &'a TypeParamBound>) -> Option<Type> {
    for b in bounds {
        if let TypeParamBound::Trait(t) = b {
            if let Some(seg) = t.path.segments.last() {
                if let PathArguments::AngleBracketed(a) = &seg.arguments {
                    for g in &a.args {
                        if let GenericArgument::AssocType(at) = g {
                            if at.ident == "Item" {
                                return Some(at.ty.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    None
}

fn camel(s: &str) -> String {
    s.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

fn prefixed(path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if path == "/api/v1" || path.starts_with("/api/v1/") {
        path
    } else {
        format!("/api/v1{path}")
    }
}

enum Recv {
    None,
    Ref,
    Arc,
}

enum ArgKind {
    Query { default: Option<Expr> },
    Body,
    Ctx { by_ref: bool },
}

struct Arg {
    name: Ident,
    ty: Type,
    kind: ArgKind,
}

/// One `#[on_request]` method, read.
struct ApiFn {
    ident: Ident,
    opts: OnRequest,
    recv: Recv,
    is_async: bool,
    args: Vec<Arg>,
    ret: Type,
    doc: Option<String>,
}

fn receiver(f: &ImplItemFn) -> syn::Result<Recv> {
    let Some(FnArg::Receiver(r)) = f.sig.inputs.first() else {
        return Ok(Recv::None);
    };
    if r.reference.is_some() {
        if r.mutability.is_some() {
            return Err(syn::Error::new(
                r.span(),
                "a handler takes &self, not &mut self: the plugin's state is shared by every request (keep what changes behind a Mutex or an atomic)",
            ));
        }
        return Ok(Recv::Ref);
    }
    if r.colon_token.is_some() && last_ident(&r.ty).is_some_and(|s| s.ident == "Arc") {
        return Ok(Recv::Arc);
    }
    Err(syn::Error::new(
        r.span(),
        "a handler takes &self or self: Arc<Self> (the state is shared, never moved)",
    ))
}

fn doc_line(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| {
        if !is_attr(a, "doc") {
            return None;
        }
        match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value().trim().to_owned()).filter(|s| !s.is_empty()),
                _ => None,
            },
            _ => None,
        }
    })
}

fn read_api(f: &mut ImplItemFn, opts: OnRequest) -> syn::Result<ApiFn> {
    let recv = receiver(f)?;
    let mut args = Vec::new();
    let mut body: Option<Ident> = None;
    for input in f.sig.inputs.iter_mut() {
        let FnArg::Typed(pt) = input else { continue };
        let name = match &*pt.pat {
            Pat::Ident(i) => i.ident.clone(),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a handler's arguments are plain names (they are the query parameters' and the body's names)",
                ))
            }
        };
        let mut default = None;
        let mut force_body = false;
        let mut force_query = false;
        let mut kept = Vec::new();
        for a in pt.attrs.drain(..) {
            if is_attr(&a, "default") {
                default = Some(a.parse_args::<Expr>()?);
            } else if is_attr(&a, "body") {
                force_body = true;
            } else if is_attr(&a, "query") {
                force_query = true;
            } else {
                kept.push(a);
            }
        }
        pt.attrs = kept;
        let ty = (*pt.ty).clone();
        if is_ctx(&ty) {
            let by_ref = matches!(ty, Type::Reference(_));
            args.push(Arg {
                name,
                ty,
                kind: ArgKind::Ctx { by_ref },
            });
            continue;
        }
        if let Type::Reference(r) = &ty {
            return Err(syn::Error::new(
                r.span(),
                format!(
                    "`{name}`: a handler's arguments are owned values deserialized from the request (String, not &str; a model, not a reference to one)"
                ),
            ));
        }
        if matches!(ty, Type::ImplTrait(_)) {
            return Err(syn::Error::new(
                ty.span(),
                format!("`{name}`: an argument needs a concrete type (it is deserialized from the request)"),
            ));
        }
        let is_body = force_body || (!force_query && !is_scalar(&ty));
        if is_body {
            if let Some(first) = &body {
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "a handler takes at most one body, and `{first}` is already the body; `{name}` would be a second (a query parameter of a type that is not a scalar, Option or Vec needs #[query])"
                    ),
                ));
            }
            if let Some(d) = &default {
                return Err(syn::Error::new(
                    d.span(),
                    format!("`{name}` is the body: #[default] is for query parameters"),
                ));
            }
            body = Some(name.clone());
            args.push(Arg {
                name,
                ty,
                kind: ArgKind::Body,
            });
        } else {
            args.push(Arg {
                name,
                ty,
                kind: ArgKind::Query { default },
            });
        }
    }
    let ret = match &f.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    if opts.stream && body.is_some() {
        return Err(syn::Error::new(
            f.sig.ident.span(),
            "a stream handler takes query parameters only (no body)",
        ));
    }
    Ok(ApiFn {
        ident: f.sig.ident.clone(),
        recv,
        is_async: f.sig.asyncness.is_some(),
        args,
        ret,
        doc: doc_line(&f.attrs),
        opts,
    })
}

fn expand_plugin(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let args = parse_plugin_args(attr)?;
    let mut imp: ItemImpl = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[plugin] goes on an impl block: `impl MyPlugin { ... }`",
        )
    })?;
    if imp.trait_.is_some() {
        return Err(syn::Error::new(
            imp.span(),
            "#[plugin] goes on an inherent impl block (`impl MyPlugin`), not a trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "a plugin type has no generic parameters",
        ));
    }
    let Some(name) = args.name.clone() else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[plugin] needs a name: #[plugin(name = \"inventory\")]",
        ));
    };
    let self_ty = (*imp.self_ty).clone();
    let type_ident = last_ident(&self_ty)
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new(self_ty.span(), "#[plugin] needs a named type"))?;
    let type_name = args
        .type_name
        .as_ref()
        .map(LitStr::value)
        .unwrap_or_else(|| type_ident.to_string());
    let plugin_name = name.value();
    let mod_name = plugin_name.replace('-', "_");
    let mod_ident = syn::parse_str::<Ident>(&format!("{mod_name}_api")).map_err(|_| {
        syn::Error::new(
            name.span(),
            "a plugin name is letters, digits, `_` and `-` (it names the `<name>_api` module)",
        )
    })?;

    let mut apis = Vec::new();
    let mut has_new = None;
    let mut has_start = None;
    for it in imp.items.iter_mut() {
        let ImplItem::Fn(f) = it else { continue };
        let mut opts = None;
        let mut kept = Vec::new();
        for a in f.attrs.drain(..) {
            if is_attr(&a, "on_request") {
                let o: OnRequest = match &a.meta {
                    syn::Meta::Path(_) => OnRequest::default(),
                    _ => a.parse_args()?,
                };
                opts = Some(o);
            } else {
                kept.push(a);
            }
        }
        f.attrs = kept;
        match opts {
            Some(o) => apis.push(read_api(f, o)?),
            None if f.sig.ident == "new" => {
                has_new = Some((
                    f.sig.inputs.len(),
                    matches!(&f.sig.output, ReturnType::Type(_, t) if is_result(t)),
                ))
            }
            None if f.sig.ident == "on_start" => {
                has_start = Some((
                    f.sig.inputs.len(),
                    f.sig.asyncness.is_some(),
                    matches!(&f.sig.output, ReturnType::Type(_, t) if is_result(t)),
                ))
            }
            None => {}
        }
    }

    let cfg_ty: Type = args
        .config
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::sf_bridge::NoParams));
    let make_state = match has_new {
        Some((n, fallible)) => {
            let call = if n == 0 {
                quote!(<#self_ty>::new())
            } else {
                quote!(<#self_ty>::new(__config))
            };
            if fallible {
                quote!(#call.map_err(|e| ::sf_bridge::ApiError::internal(e.to_string())))
            } else {
                quote!(::core::result::Result::Ok(#call))
            }
        }
        None => {
            quote_spanned!(self_ty.span()=> ::core::result::Result::Ok(<#self_ty as ::core::default::Default>::default()))
        }
    };
    let config_call = args.config.as_ref().map(|c| quote!(.config::<#c>()));

    let mut meta = quote!(::sf_bridge::PluginMetadata::new(#name));
    for (k, v) in [
        ("version", &args.version),
        ("description", &args.description),
        ("author", &args.author),
        ("url", &args.url),
    ] {
        if let Some(v) = v {
            let k = Ident::new(k, Span::call_site());
            meta = quote!(#meta.#k(#v));
        }
    }
    let required: Vec<TokenStream2> = args
        .required
        .iter()
        .map(|e| match e {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => quote!(#s),
            other => quote!(<#other as ::sf_bridge::RemoteApi>::NAME),
        })
        .collect();
    if !required.is_empty() {
        meta = quote!(#meta.required_remote_apis({
            let v: ::std::vec::Vec<&'static str> = ::std::vec![#(#required),*];
            v
        }));
    }

    let on_start = has_start.map(|(n, is_async, fallible)| {
        let call = if n >= 2 {
            quote!(<#self_ty>::on_start(&*__this, &__ctx))
        } else {
            quote!(<#self_ty>::on_start(&*__this))
        };
        let call = if is_async { quote!(#call.await) } else { call };
        let done = if fallible {
            quote!(#call.map_err(::sf_bridge::__private::api_error))
        } else {
            quote!({ #call; ::core::result::Result::Ok(()) })
        };
        quote! {
            .on_start(|__ctx: ::sf_bridge::PluginCtx| async move {
                let __this = match __ctx.state::<#self_ty>() {
                    ::core::result::Result::Ok(t) => t,
                    ::core::result::Result::Err(e) => return ::core::result::Result::Err(e),
                };
                #done
            })
        }
    });

    let mut hidden = Vec::new();
    let mut api_calls = Vec::new();
    let mut typed = Vec::new();
    let mut reexports = Vec::new();
    let vis_text = args
        .api_vis
        .as_ref()
        .map(|v| v.value().replace(' ', ""))
        .unwrap_or_else(|| "pub".into());
    let (vis, mod_vis, use_vis) = match vis_text.as_str() {
        "pub(crate)" => (quote!(pub(crate)), quote!(pub(crate)), quote!(pub(crate))),
        "" => (quote!(), quote!(), quote!(pub(super))),
        _ => (quote!(pub), quote!(pub), quote!(pub)),
    };
    for api in &apis {
        let (call, items, t, re) = expand_api(
            api,
            &self_ty,
            &type_ident,
            &plugin_name,
            &type_name,
            args.typed,
            (&vis, &use_vis),
        )?;
        api_calls.push(call);
        hidden.push(items);
        typed.push(t);
        reexports.push(re);
    }
    let module = args.typed.then(|| {
        let doc =
            format!("Typed calls of the `{plugin_name}` plugin's APIs (`PluginCtx::call_api`).");
        quote! {
            #[doc = #doc]
            #[allow(unused_imports)]
            #mod_vis mod #mod_ident {
                #(#reexports)*
            }
        }
    });

    Ok(quote! {
        #imp

        const _: () = {
            #(#hidden)*

            impl ::sf_bridge::PluginDef for #self_ty {
                fn plugin() -> ::sf_bridge::Plugin {
                    ::sf_bridge::Plugin::new(#meta)
                        .type_name(#type_name)
                        #config_call
                        .state(|__config: #cfg_ty| {
                            let _ = &__config;
                            #make_state
                        })
                        #on_start
                        #(#api_calls)*
                }
            }

            ::sf_bridge::__private::inventory::submit! {
                ::sf_bridge::Registration::new(<#self_ty as ::sf_bridge::PluginDef>::plugin)
            }
        };

        #(#typed)*
        #module
    })
}

/// One API: the builder call, the hidden query model, the typed-call struct and its
/// re-export in `<name>_api`.
fn expand_api(
    api: &ApiFn,
    self_ty: &Type,
    type_ident: &Ident,
    plugin_name: &str,
    type_name: &str,
    typed_calls: bool,
    (vis, use_vis): (&TokenStream2, &TokenStream2),
) -> syn::Result<(TokenStream2, TokenStream2, TokenStream2, TokenStream2)> {
    let method = &api.ident;
    let method_str = method.to_string();
    let o = &api.opts;
    let q_ident = format_ident!("__SfQuery{}{}", type_ident, camel(&method_str));
    let args_ident = format_ident!("__Sf{}{}Args", type_ident, camel(&method_str));
    let camel_ident = format_ident!("{}", camel(&method_str));

    // The query model.
    let mut fields = Vec::new();
    let mut default_fns = Vec::new();
    for a in &api.args {
        let ArgKind::Query { default } = &a.kind else {
            continue;
        };
        let (n, ty) = (&a.name, &a.ty);
        match default {
            Some(d) => {
                let f = format_ident!("__sf_default_{}_{}_{}", type_ident, method, n);
                let fs = f.to_string();
                // A string literal becomes the String it stands for; other expressions are
                // taken as they are (an integer literal takes the parameter's type).
                let value = match d {
                    Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(_), ..
                    }) => {
                        quote!(::core::convert::Into::into(#d))
                    }
                    _ => quote!(#d),
                };
                default_fns.push(quote_spanned! {d.span()=>
                    #[allow(non_snake_case)]
                    fn #f() -> #ty { #value }
                });
                fields.push(quote!(#[serde(default = #fs)] #n: #ty));
            }
            None => fields.push(quote!(#n: #ty)),
        }
    }
    let hidden = quote! {
        #(#default_fns)*
        #[derive(::sf_bridge::serde::Deserialize, ::sf_bridge::schemars::JsonSchema)]
        #[serde(crate = "::sf_bridge::serde")]
        #[schemars(crate = "::sf_bridge::schemars")]
        #[allow(non_camel_case_types, dead_code)]
        struct #q_ident { #(#fields,)* }
    };

    // The call of the method.
    let call_args: Vec<TokenStream2> = api
        .args
        .iter()
        .map(|a| {
            let n = &a.name;
            match &a.kind {
                ArgKind::Query { .. } => quote!(__q.#n),
                ArgKind::Body => quote!(__b),
                ArgKind::Ctx { by_ref: true } => quote!(&__ctx),
                ArgKind::Ctx { by_ref: false } => quote!(__ctx.clone()),
            }
        })
        .collect();
    let (get_this, recv) = match api.recv {
        Recv::None => (quote!(), quote!()),
        Recv::Ref => (
            quote! {
                let __this = match __ctx.state::<#self_ty>() {
                    ::core::result::Result::Ok(t) => t,
                    ::core::result::Result::Err(e) => return ::core::result::Result::Err(e),
                };
            },
            quote!(&*__this,),
        ),
        Recv::Arc => (
            quote! {
                let __this = match __ctx.state::<#self_ty>() {
                    ::core::result::Result::Ok(t) => t,
                    ::core::result::Result::Err(e) => return ::core::result::Result::Err(e),
                };
            },
            quote!(::std::sync::Arc::clone(&__this),),
        ),
    };
    let awaited = if api.is_async {
        quote!(.await)
    } else {
        quote!()
    };
    let call = quote!(<#self_ty>::#method(#recv #(#call_args),*) #awaited);
    let body = api.args.iter().find(|a| matches!(a.kind, ArgKind::Body));

    let mut builder = quote!(::sf_bridge::Api::new(#method_str));
    if let Some(p) = &o.path {
        builder = quote!(#builder.path(#p));
    }
    if !o.methods.is_empty() {
        let ms = &o.methods;
        builder = quote!(#builder.methods([#(#ms),*]));
    }
    let call_type = o.call_type.as_ref().map(|(c, _)| c.as_str());
    if let Some((c, span)) = &o.call_type {
        if c != "func" && o.path.is_none() {
            return Err(syn::Error::new(
                *span,
                format!("call_type = \"{c}\" serves an HTTP route, which needs a path"),
            ));
        }
        let v = Ident::new(&camel(c), Span::call_site());
        builder = quote!(#builder.call_type(::sf_bridge::CallType::#v));
    }
    if o.raw_response {
        builder = quote!(#builder.raw_response());
    }
    if o.idempotent {
        builder = quote!(#builder.idempotent());
    }
    if !o.tags.is_empty() {
        let t = &o.tags;
        builder = quote!(#builder.tags([#(#t),*]));
    }
    if let Some(s) = o.summary.as_ref().map(LitStr::value).or(api.doc.clone()) {
        builder = quote!(#builder.summary(#s));
    }

    let output: Type;
    let handler = if o.stream {
        let (inner, fallible) = if is_result(&api.ret) {
            let seg = last_ident(&api.ret).expect("a Result");
            (
                first_type_arg(seg).cloned().unwrap_or(api.ret.clone()),
                true,
            )
        } else {
            (api.ret.clone(), false)
        };
        let item = stream_item(&inner).ok_or_else(|| {
            syn::Error::new(
                api.ret.span(),
                "a stream handler returns impl Stream<Item = T> (or a Result of one); T is a payload, a StreamEvent, or a Result of either",
            )
        })?;
        let (conv, payload): (TokenStream2, Option<Type>) = {
            let event = |t: &Type| last_ident(t).is_some_and(|s| s.ident == "StreamEvent");
            if event(&item) {
                (quote!(::sf_bridge::__private::event), None)
            } else if is_result(&item) {
                let seg = last_ident(&item).expect("a Result");
                let ok = first_type_arg(seg).cloned();
                match ok {
                    Some(t) if event(&t) => (quote!(::sf_bridge::__private::event_or_error), None),
                    Some(t) => (quote!(::sf_bridge::__private::chunk_or_error), Some(t)),
                    None => (quote!(::sf_bridge::__private::chunk_or_error), None),
                }
            } else {
                (quote!(::sf_bridge::__private::chunk), Some(item.clone()))
            }
        };
        let is_text = payload
            .as_ref()
            .is_some_and(|t| last_ident(t).is_some_and(|s| s.ident == "String"));
        output = match &payload {
            Some(t) if !is_text => syn::parse_quote!(::std::vec::Vec<#t>),
            _ => syn::parse_quote!(::std::vec::Vec<::sf_bridge::serde_json::Value>),
        };
        if let Some(t) = payload.as_ref().filter(|_| !is_text) {
            builder = quote!(#builder.event_type::<#t>());
        } else if is_text {
            builder = quote!(#builder.event_type::<::sf_bridge::TextChunk>());
        }
        let start = if fallible {
            quote! {
                let __s = match #call {
                    ::core::result::Result::Ok(s) => s,
                    ::core::result::Result::Err(e) => return __sink.fail(::sf_bridge::__private::api_error(e)),
                };
            }
        } else {
            quote!(let __s = #call;)
        };
        quote! {
            .handle_stream(|__q: #q_ident, __ctx: ::sf_bridge::PluginCtx| async move {
                #get_this
                let (__sink, __out) = ::sf_bridge::__private::stream_channel();
                ::sf_bridge::__private::spawn(async move {
                    #start
                    __sink.run(__s, #conv).await;
                });
                __out.await
            })
        }
    } else {
        let (done, out) = if is_result(&api.ret) {
            let seg = last_ident(&api.ret).expect("a Result");
            let ok = first_type_arg(seg)
                .cloned()
                .unwrap_or(syn::parse_quote!(()));
            (quote!(#call.map_err(::sf_bridge::__private::api_error)), ok)
        } else {
            (
                quote!(::core::result::Result::<_, ::sf_bridge::ApiError>::Ok(#call)),
                api.ret.clone(),
            )
        };
        output = out;
        match body {
            Some(b) => {
                let bt = &b.ty;
                let bn = b.name.to_string();
                quote! {
                    .handle_with_body(#bn, |__q: #q_ident, __b: #bt, __ctx: ::sf_bridge::PluginCtx| async move {
                        #get_this
                        #done
                    })
                }
            }
            None => quote! {
                .handle(|__q: #q_ident, __ctx: ::sf_bridge::PluginCtx| async move {
                    #get_this
                    #done
                })
            },
        }
    };
    let api_call = quote!(.api(#builder #handler));

    if !typed_calls {
        return Ok((api_call, hidden, quote!(), quote!()));
    }
    // The typed call.
    let name = match &o.path {
        Some(path) if call_type != Some("func") => {
            let m = o
                .methods
                .first()
                .map(|m| m.value().to_ascii_uppercase())
                .unwrap_or_else(|| "GET".into());
            format!("{m} {}", prefixed(&path.value()))
        }
        _ => format!("{plugin_name}.{type_name}.{method_str}"),
    };
    let mut tfields = Vec::new();
    let mut required = Vec::new();
    let mut inits = Vec::new();
    let mut setters = Vec::new();
    for a in &api.args {
        let (n, ty) = (&a.name, &a.ty);
        match &a.kind {
            ArgKind::Ctx { .. } => {}
            ArgKind::Query { default: Some(_) } => {
                let doc = format!("`{n}` (the handler's default when not set).");
                tfields.push(quote!(
                    #[serde(skip_serializing_if = "::core::option::Option::is_none")]
                    #vis #n: ::core::option::Option<#ty>
                ));
                inits.push(quote!(#n: ::core::option::Option::None));
                setters.push(quote!(
                    #[doc = #doc]
                    #vis fn #n(mut self, value: #ty) -> Self { self.#n = ::core::option::Option::Some(value); self }
                ));
            }
            _ => {
                tfields.push(quote!(#vis #n: #ty));
                required.push(quote!(#n: #ty));
                inits.push(quote!(#n));
            }
        }
    }
    let doc = format!("The arguments of `{name}`, for a typed `call_api`.");
    let typed = quote! {
        #[doc = #doc]
        #[derive(::sf_bridge::serde::Serialize)]
        #[serde(crate = "::sf_bridge::serde")]
        #[allow(non_camel_case_types)]
        #vis struct #args_ident { #(#tfields,)* }

        impl #args_ident {
            /// The required arguments; the defaulted ones have setters.
            #[allow(clippy::new_without_default)]
            #vis fn new(#(#required),*) -> Self { Self { #(#inits),* } }
            #(#setters)*
        }

        impl ::sf_bridge::RemoteApi for #args_ident {
            const NAME: &'static str = #name;
            type Output = #output;
        }
    };
    let re = quote!(#use_vis use super::#args_ident as #camel_ident;);
    Ok((api_call, hidden, typed, re))
}
