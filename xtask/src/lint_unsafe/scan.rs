//! Finding every use of `unsafe` in one file, with `syn`.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::{self, Visit};

/// One appearance of the `unsafe` keyword.
#[derive(Debug, PartialEq, Eq)]
pub struct UnsafeUse {
    /// 1-based line of the keyword.
    pub line: usize,
    /// 0-based column of the keyword.
    pub column: usize,
    /// 1-based line where the innermost statement, match arm or item holding the keyword starts:
    /// a SAFETY comment above it also counts (rustfmt moves `unsafe` off the `let` line).
    pub anchor_line: usize,
    /// What it introduces, for the message.
    pub kind: &'static str,
    /// Whether an allowlisted crate must argue it with a SAFETY comment (blocks and impls:
    /// an `unsafe fn` states a contract, its body's blocks carry the arguments).
    pub needs_argument: bool,
}

/// What the lint needs to know about a file.
#[derive(Debug)]
pub struct FileScan {
    /// Whether the file has `#![forbid(unsafe_code)]` (meaningful for crate roots).
    pub forbids_unsafe: bool,
    /// Every `unsafe`, in source order.
    pub uses: Vec<UnsafeUse>,
}

impl FileScan {
    pub fn parse(source: &str) -> syn::Result<Self> {
        let file = syn::parse_file(source)?;
        let forbids_unsafe = file.attrs.iter().any(forbids_unsafe_code);
        let mut finder = Finder::default();
        finder.visit_file(&file);
        let mut uses = finder.uses;
        uses.sort_by_key(|site| (site.line, site.column));
        Ok(Self {
            forbids_unsafe,
            uses,
        })
    }
}

/// `#![forbid(..., unsafe_code, ...)]`.
fn forbids_unsafe_code(attr: &syn::Attribute) -> bool {
    if !matches!(attr.style, syn::AttrStyle::Inner(_)) || !attr.path().is_ident("forbid") {
        return false;
    }
    let mut found = false;
    let parsed = attr.parse_nested_meta(|meta| {
        found |= meta.path.is_ident("unsafe_code");
        Ok(())
    });
    parsed.is_ok() && found
}

#[derive(Default)]
struct Finder {
    uses: Vec<UnsafeUse>,
    /// Start lines of the statements, arms and items being visited, innermost last.
    anchors: Vec<usize>,
}

impl Finder {
    fn found(&mut self, span: Span, kind: &'static str, needs_argument: bool) {
        let start = span.start();
        self.uses.push(UnsafeUse {
            line: start.line,
            column: start.column,
            anchor_line: self.anchors.last().copied().unwrap_or(start.line),
            kind,
            needs_argument,
        });
    }

    /// `unsafe` inside tokens syn does not parse (macro bodies, attribute arguments).
    fn found_in_tokens(&mut self, tokens: TokenStream, kind: &'static str) {
        for span in spans_of_unsafe(tokens) {
            self.found(span, kind, false);
        }
    }

    fn anchored(&mut self, node: &impl Spanned, visit: impl FnOnce(&mut Self)) {
        self.anchors.push(node.span().start().line);
        visit(self);
        self.anchors.pop();
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_stmt(&mut self, node: &'ast syn::Stmt) {
        self.anchored(node, |this| visit::visit_stmt(this, node));
    }

    fn visit_arm(&mut self, node: &'ast syn::Arm) {
        self.anchored(node, |this| visit::visit_arm(this, node));
    }

    fn visit_item(&mut self, node: &'ast syn::Item) {
        self.anchored(node, |this| visit::visit_item(this, node));
    }

    fn visit_expr_unsafe(&mut self, node: &'ast syn::ExprUnsafe) {
        self.found(node.unsafe_token.span, "`unsafe` block", true);
        visit::visit_expr_unsafe(self, node);
    }

    fn visit_signature(&mut self, node: &'ast syn::Signature) {
        if let Some(token) = node.unsafety {
            self.found(token.span, "`unsafe fn`", false);
        }
        visit::visit_signature(self, node);
    }

    fn visit_type_bare_fn(&mut self, node: &'ast syn::TypeBareFn) {
        if let Some(token) = node.unsafety {
            self.found(token.span, "`unsafe fn` pointer type", false);
        }
        visit::visit_type_bare_fn(self, node);
    }

    fn visit_item_impl(&mut self, node: &'ast syn::ItemImpl) {
        if let Some(token) = node.unsafety {
            self.found(token.span, "`unsafe impl`", true);
        }
        visit::visit_item_impl(self, node);
    }

    fn visit_item_trait(&mut self, node: &'ast syn::ItemTrait) {
        if let Some(token) = node.unsafety {
            self.found(token.span, "`unsafe trait`", false);
        }
        visit::visit_item_trait(self, node);
    }

    fn visit_item_foreign_mod(&mut self, node: &'ast syn::ItemForeignMod) {
        // Declaring foreign functions is FFI, which belongs in the host boundary, with or without
        // the `unsafe` keyword (editions before 2024 allow plain `extern "C" {}`).
        let span = match node.unsafety {
            Some(token) => token.span,
            None => node.abi.extern_token.span,
        };
        self.found(span, "`extern` block", false);
        visit::visit_item_foreign_mod(self, node);
    }

    fn visit_attribute(&mut self, node: &'ast syn::Attribute) {
        // `#[unsafe(no_mangle)]`, and `unsafe(...)` nested in arguments, e.g. of `cfg_attr`.
        let path = node.path();
        if path.is_ident("unsafe") {
            self.found(path.segments[0].ident.span(), "`unsafe` attribute", false);
        }
        if let syn::Meta::List(list) = &node.meta {
            self.found_in_tokens(list.tokens.clone(), "`unsafe` attribute");
        }
        visit::visit_attribute(self, node);
    }

    fn visit_macro(&mut self, node: &'ast syn::Macro) {
        self.found_in_tokens(node.tokens.clone(), "`unsafe` in a macro");
        visit::visit_macro(self, node);
    }
}

/// The spans of every `unsafe` identifier in `tokens`, groups included.
fn spans_of_unsafe(tokens: TokenStream) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut stack = vec![tokens];
    while let Some(tokens) = stack.pop() {
        for tree in tokens {
            match tree {
                TokenTree::Ident(ident) if ident == "unsafe" => spans.push(ident.span()),
                TokenTree::Group(group) => stack.push(group.stream()),
                _ => {}
            }
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<(usize, &'static str)> {
        let scan = FileScan::parse(source).unwrap();
        scan.uses
            .iter()
            .map(|site| (site.line, site.kind))
            .collect()
    }

    #[test]
    fn every_form_is_found() {
        let source = r#"
unsafe fn a() {}
fn b() { unsafe { a() } }
unsafe impl Send for X {}
unsafe trait T {}
unsafe extern "C" { fn c(); }
#[unsafe(no_mangle)]
fn d() {}
type F = unsafe fn();
m! { unsafe { x } }
"#;
        assert_eq!(
            kinds(source),
            [
                (2, "`unsafe fn`"),
                (3, "`unsafe` block"),
                (4, "`unsafe impl`"),
                (5, "`unsafe trait`"),
                (6, "`extern` block"),
                (7, "`unsafe` attribute"),
                (9, "`unsafe fn` pointer type"),
                (10, "`unsafe` in a macro"),
            ]
        );
    }

    #[test]
    fn comments_and_strings_are_not_uses() {
        let source = r##"
//! unsafe in a doc comment
// unsafe { } in a comment
/* unsafe */
fn f() -> &'static str { "unsafe { }" }
const R: &str = r#"unsafe fn"#;
/// unsafe
fn g() { println!("unsafe"); }
"##;
        assert_eq!(kinds(source), []);
    }

    #[test]
    fn forbid_is_recognised_among_other_lints() {
        assert!(
            FileScan::parse("#![forbid(unsafe_code)]")
                .unwrap()
                .forbids_unsafe
        );
        assert!(
            FileScan::parse("#![forbid(missing_docs, unsafe_code)]")
                .unwrap()
                .forbids_unsafe
        );
        assert!(
            !FileScan::parse("#![deny(unsafe_code)]")
                .unwrap()
                .forbids_unsafe
        );
        assert!(
            !FileScan::parse("#[forbid(unsafe_code)] fn f() {}")
                .unwrap()
                .forbids_unsafe
        );
    }
}
