//! The rules for each Rust source file: it opens with `//!`, and it has no
//! `unsafe` outside the one FFI module. [`code_only`] tells code from
//! comments and literals.

use super::{Violation, violation};

/// The one file allowed to contain `unsafe`.
pub const UNSAFE_ALLOWED: &str = "crates/wd-events/src/ffi.rs";

/// The per-file rules: `//!` opening, no `unsafe`.
pub fn check_source(rel: &str, text: &str, out: &mut Vec<Violation>) {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    if !first.is_some_and(|l| l.starts_with("//!")) {
        out.push(violation(
            rel,
            "does not open with a `//!` comment saying what the file is for",
        ));
    }
    if rel != UNSAFE_ALLOWED {
        let code = code_only(text);
        for (n, line) in code.lines().enumerate() {
            if has_word(line, "unsafe") {
                out.push(violation(
                    &format!("{rel}:{}", n + 1),
                    format!("`unsafe` outside {UNSAFE_ALLOWED}"),
                ));
            }
        }
    }
}

/// Whether `word` occurs in `line` as a whole identifier.
pub fn has_word(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Rust source with comments and the insides of string and character
/// literals blanked out (newlines kept, so line numbers hold). Lifetimes
/// (`'a`) stay code.
pub fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        // Line comment.
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        // Block comment, nested.
        if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br"…", cr"…".
        let prev_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if !prev_ident && matches!(c[i], 'r' | 'b' | 'c') {
            let mut j = i;
            if c[j] != 'r' && c.get(j + 1) == Some(&'r') {
                j += 1;
            }
            if c[j] == 'r' {
                let mut k = j + 1;
                let mut hashes = 0;
                while c.get(k) == Some(&'#') {
                    hashes += 1;
                    k += 1;
                }
                if c.get(k) == Some(&'"') {
                    for &ch in &c[i..=k] {
                        out.push(ch);
                    }
                    i = k + 1;
                    while i < c.len() {
                        if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
                            break;
                        }
                        out.push(blank(c[i]));
                        i += 1;
                    }
                    // The closing quote and hashes, if any.
                    for _ in 0..=hashes {
                        if i < c.len() {
                            out.push(c[i]);
                            i += 1;
                        }
                    }
                    continue;
                }
            }
        }
        // Ordinary strings (and b"…", c"…": the prefix is kept as code).
        if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(' ');
                    out.push(blank(c[i + 1]));
                    i += 2;
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
            continue;
        }
        // Character literals; a lifetime or label stays.
        if c[i] == '\'' {
            let end = if next == Some('\\') {
                // The escaped character is at i + 2; the quote comes after.
                (i + 3..c.len().min(i + 13)).find(|&k| c[k] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.push('\'');
                for _ in i + 1..end {
                    out.push(' ');
                }
                out.push('\'');
                i = end + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}
