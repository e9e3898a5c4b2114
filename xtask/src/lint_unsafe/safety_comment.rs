//! Finding the `// SAFETY:` comment that argues an `unsafe` block (syn drops comments, so this
//! reads the source text).

/// The marker a soundness argument starts with (the same one clippy's
/// `undocumented_unsafe_blocks` looks for).
const MARKER: &str = "SAFETY:";

/// Whether the `unsafe` keyword at `line` (1-based) and `column` (0-based, in chars) is argued:
/// a `/* SAFETY: */` comment earlier on the same line, or `SAFETY:` in the run of comment (and
/// attribute) lines directly above that line.
pub fn is_above(source: &str, line: usize, column: usize) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    let Some(index) = line.checked_sub(1) else {
        return false;
    };
    let Some(current) = lines.get(index) else {
        return false;
    };
    let before: String = current.chars().take(column).collect();
    if before
        .find("/*")
        .is_some_and(|comment| before[comment..].contains(MARKER))
    {
        return true;
    }
    for above in lines[..index].iter().rev().map(|l| l.trim_start()) {
        if above.starts_with("//") || above.starts_with("/*") || above.starts_with('*') {
            if above.contains(MARKER) {
                return true;
            }
        } else if !above.starts_with("#[") {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::is_above;

    /// Line and column of the first `unsafe` in `source`.
    fn check(source: &str) -> bool {
        let (line, text) = source
            .lines()
            .enumerate()
            .find(|(_, text)| text.contains("unsafe"))
            .unwrap();
        is_above(source, line + 1, text.find("unsafe").unwrap())
    }

    #[test]
    fn comment_directly_above() {
        assert!(check(
            "fn f() {\n    // SAFETY: because.\n    unsafe { g() }\n}"
        ));
    }

    #[test]
    fn multi_line_argument_above_the_statement() {
        let source = "    // SAFETY: the fd is open\n    // and nothing else aliases.\n    let rc = unsafe {\n";
        assert!(check(source));
    }

    #[test]
    fn comment_on_the_same_line() {
        assert!(check("let v = /* SAFETY: x */ unsafe { f() };"));
        assert!(check(
            "/* SAFETY: a block comment\n * over lines */\nunsafe { f() }"
        ));
        assert!(!check("let v = /* trust me */ unsafe { f() };"));
    }

    #[test]
    fn missing_or_detached_comments_do_not_count() {
        assert!(!check("fn f() {\n    unsafe { g() }\n}"));
        // A code line between the comment and the block detaches it.
        assert!(!check("// SAFETY: stale\nlet a = 1;\nunsafe { g() }"));
        // A comment without the marker argues nothing.
        assert!(!check("// this is fine, trust me\nunsafe { g() }"));
        assert!(!check("unsafe { g() } // SAFETY: after the fact"));
    }

    #[test]
    fn attributes_may_sit_between() {
        assert!(check(
            "// SAFETY: the type holds no pointers.\n#[allow(dead_code)]\nunsafe impl Send for X {}"
        ));
    }
}
