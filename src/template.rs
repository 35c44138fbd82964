//! The `{field}` template grammar, once: a text is literal runs and `{name}`
//! placeholders. Stream-sink targets (`"jobs.{task_for}"`) and schedule
//! field values (`"{name}-{tick}"`) both use it; they differ only in the
//! [`Syntax`] they parse with (whether `{{`/`}}` are literal braces, and
//! which placeholder names are known), so validation and rendering can
//! never disagree about what a template means.

/// How a template is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Syntax {
    /// `{{` and `}}` stand for literal braces; otherwise every brace
    /// delimits a placeholder.
    pub escaped_braces: bool,
    /// The placeholder names allowed; `None` = any name (e.g. a field).
    pub known: Option<&'static [&'static str]>,
}

impl Syntax {
    /// Stream-sink targets: any field name, braces always delimit (a stream
    /// name never needs a literal brace here).
    pub(crate) const FIELDS: Syntax = Syntax {
        escaped_braces: false,
        known: None,
    };
}

/// One run of a parsed template, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Text copied as it is (an escaped brace is a one-brace literal).
    Literal(&'a str),
    /// `{name}`: replaced by the value of `name`.
    Placeholder(&'a str),
}

/// Splits `text` into pieces, or says why it is malformed (the message
/// quotes the whole text).
pub(crate) fn parse(text: &str, syntax: Syntax) -> Result<Vec<Piece<'_>>, String> {
    if syntax.escaped_braces {
        parse_escaped(text, syntax.known)
    } else {
        parse_plain(text, syntax.known)
    }
}

/// The placeholder names of `text` in order of use (repeats included), or
/// why it is malformed.
pub(crate) fn placeholders(text: &str, syntax: Syntax) -> Result<Vec<&str>, String> {
    Ok(parse(text, syntax)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder(name) => Some(name),
            Piece::Literal(_) => None,
        })
        .collect())
}

/// Concatenates `pieces`, each placeholder replaced by `value(name)`.
pub(crate) fn render<'a>(pieces: &[Piece<'a>], mut value: impl FnMut(&'a str) -> String) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(s) => out.push_str(s),
            Piece::Placeholder(name) => out.push_str(&value(name)),
        }
    }
    out
}

fn check_known(text: &str, name: &str, known: Option<&[&str]>) -> Result<(), String> {
    match known {
        Some(known) if !known.contains(&name) => Err(format!(
            "unknown placeholder `{{{name}}}` in {text:?} (known: {})",
            known
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(()),
    }
}

/// Every `{` opens and every `}` closes a placeholder.
fn parse_plain<'a>(text: &'a str, known: Option<&[&str]>) -> Result<Vec<Piece<'a>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("unmatched `}}` in {text:?}"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&i| after.as_bytes()[i] == b'}')
            .ok_or_else(|| format!("unclosed `{{` in {text:?}"))?;
        let name = &after[..close];
        if name.is_empty() {
            return Err(format!("empty placeholder `{{}}` in {text:?}"));
        }
        check_known(text, name, known)?;
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        out.push(Piece::Placeholder(name));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Ok(out)
}

/// Like [`parse_plain`], but `{{` and `}}` are literal braces.
fn parse_escaped<'a>(text: &'a str, known: Option<&[&str]>) -> Result<Vec<Piece<'a>>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut literal_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let brace = bytes[i];
        if brace != b'{' && brace != b'}' {
            i += 1;
            continue;
        }
        if literal_from < i {
            out.push(Piece::Literal(&text[literal_from..i]));
        }
        if bytes.get(i + 1) == Some(&brace) {
            // `{{` or `}}`: the brace itself.
            out.push(Piece::Literal(&text[i..i + 1]));
            i += 2;
        } else if brace == b'}' {
            return Err(format!("unmatched `}}` in {text:?} (write `}}}}`)"));
        } else {
            let rest = &text[i + 1..];
            let close = rest
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {text:?}"))?;
            let name = &rest[..close];
            if name.is_empty() || name.contains('{') {
                return Err(format!("bad placeholder in {text:?}"));
            }
            check_known(text, name, known)?;
            out.push(Piece::Placeholder(name));
            i += close + 2;
        }
        literal_from = i;
    }
    if literal_from < bytes.len() {
        out.push(Piece::Literal(&text[literal_from..]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESCAPED: Syntax = Syntax {
        escaped_braces: true,
        known: Some(&["a", "b"]),
    };

    #[test]
    fn plain_fields_and_errors() {
        assert_eq!(
            placeholders("x.{a}.{b}", Syntax::FIELDS).unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(
            parse("x.{a}y", Syntax::FIELDS).unwrap(),
            vec![
                Piece::Literal("x."),
                Piece::Placeholder("a"),
                Piece::Literal("y")
            ]
        );
        let err = |t| parse(t, Syntax::FIELDS).unwrap_err();
        assert_eq!(err("a}"), "unmatched `}` in \"a}\"");
        assert_eq!(err("a{b"), "unclosed `{` in \"a{b\"");
        assert_eq!(err("a{b{c}"), "unclosed `{` in \"a{b{c}\"");
        assert_eq!(err("a{}"), "empty placeholder `{}` in \"a{}\"");
    }

    #[test]
    fn escaped_braces_and_known_names() {
        let pieces = parse("{{x}} {a}-{b}", ESCAPED).unwrap();
        let out = render(&pieces, |n| n.to_uppercase());
        assert_eq!(out, "{x} A-B");
        let err = |t| parse(t, ESCAPED).unwrap_err();
        assert_eq!(err("a}"), "unmatched `}` in \"a}\" (write `}}`)");
        assert_eq!(err("{a"), "unclosed `{` in \"{a\"");
        assert_eq!(err("{}"), "bad placeholder in \"{}\"");
        assert_eq!(err("{x{a}"), "bad placeholder in \"{x{a}\"");
        assert_eq!(
            err("{c} {a"),
            "unknown placeholder `{c}` in \"{c} {a\" (known: {a}, {b})"
        );
    }
}
