//! Compose's variable interpolation in string values: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`, `${VAR+other}`,
//! `$$` for a literal `$`. Defaults and alternatives may hold interpolations themselves.

/// Expands `s`. `lookup` answers a variable's value (None: unset). A variable that is unset and
/// has no default expands to "" and adds a warning, as compose does.
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner).ok_or_else(|| {
                format!("invalid interpolation in {s:?}: \"${{\" without its closing \"}}\"")
            })?;
            out.push_str(&braced(&inner[..end], s, lookup, warnings)?);
            rest = &inner[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                return Err(format!(
                    "invalid interpolation in {s:?}: \"$\" must be followed by a variable name or \"{{\" (write \"$$\" for a literal \"$\")"
                ));
            }
            out.push_str(&value_of(&after[..n], lookup, warnings));
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return 0;
    }
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// Index of the `}` closing a `${` whose content starts `s`, skipping nested `${...}`.
fn closing_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn value_of(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> String {
    lookup(name).unwrap_or_else(|| {
        let w = format!("the {name:?} variable is not set: defaulting to a blank string");
        if !warnings.contains(&w) {
            warnings.push(w);
        }
        String::new()
    })
}

/// The content of `${...}`.
fn braced(
    inner: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let n = name_len(inner);
    let name = &inner[..n];
    let op = &inner[n..];
    if n == 0 {
        return Err(format!(
            "invalid interpolation in {whole:?}: \"${{{inner}}}\" does not start with a variable name"
        ));
    }
    if op.is_empty() {
        return Ok(value_of(name, lookup, warnings));
    }
    let val = lookup(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    // With a colon, an empty value counts as unset.
    let set = match &val {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let mut chars = op.chars();
    let kind = chars.next();
    let arg = chars.as_str();
    match kind {
        Some('-') => {
            if set {
                Ok(val.unwrap_or_default())
            } else {
                interpolate(arg, lookup, warnings)
            }
        }
        Some('?') => {
            if set {
                Ok(val.unwrap_or_default())
            } else {
                let msg = interpolate(arg, lookup, warnings)?;
                Err(if msg.is_empty() {
                    format!("required variable {name:?} is missing a value")
                } else {
                    format!("required variable {name:?} is missing a value: {msg}")
                })
            }
        }
        Some('+') => {
            if set {
                interpolate(arg, lookup, warnings)
            } else {
                Ok(String::new())
            }
        }
        _ => Err(format!(
            "invalid interpolation in {whole:?}: \"${{{inner}}}\": expected \"}}\", \":-\", \"-\", \":?\", \"?\", \":+\" or \"+\" after {name:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/root".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            "INNER" => Some("in".into()),
            _ => None,
        }
    }

    fn ok(s: &str) -> (String, Vec<String>) {
        let mut w = Vec::new();
        let r = interpolate(s, &env, &mut w).unwrap_or_else(|e| panic!("{s}: {e}"));
        (r, w)
    }

    fn err(s: &str) -> String {
        interpolate(s, &env, &mut Vec::new()).unwrap_err()
    }

    #[test]
    fn plain_and_escapes() {
        assert_eq!(ok("no vars").0, "no vars");
        assert_eq!(ok("").0, "");
        assert_eq!(ok("$$HOME").0, "$HOME");
        assert_eq!(ok("a$$").0, "a$");
        assert_eq!(ok("$HOME/x").0, "/root/x");
        assert_eq!(ok("${HOME}x").0, "/rootx");
        assert_eq!(ok("p=$PORT:80").0, "p=8080:80");
        assert_eq!(ok("ünï${PORT}ü").0, "ünï8080ü");
    }

    #[test]
    fn unset_warns_once() {
        let (r, w) = ok("${NOPE}-$NOPE");
        assert_eq!(r, "-");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"NOPE\" variable is not set"), "{w:?}");
        // set but empty: no warning
        assert_eq!(ok("[$EMPTY]"), ("[]".into(), vec![]));
    }

    #[test]
    fn defaults() {
        assert_eq!(ok("${NOPE:-dflt}").0, "dflt");
        assert_eq!(ok("${NOPE-dflt}").0, "dflt");
        assert_eq!(ok("${EMPTY:-dflt}").0, "dflt");
        assert_eq!(ok("${EMPTY-dflt}").0, "");
        assert_eq!(ok("${PORT:-1}").0, "8080");
        assert_eq!(ok("${NOPE:-}").0, "");
        assert_eq!(ok("${NOPE:-a:b/c}").0, "a:b/c");
        // nested
        assert_eq!(ok("${NOPE:-${INNER}x}").0, "inx");
        assert_eq!(ok("${NOPE:-${ALSO:-deep}}").0, "deep");
        assert_eq!(ok("${NOPE:-$$}").0, "$");
        // no warning for a defaulted variable
        assert!(ok("${NOPE:-x}").1.is_empty());
    }

    #[test]
    fn required_and_alternatives() {
        assert_eq!(ok("${PORT:?need a port}").0, "8080");
        let e = err("${NOPE:?need a port}");
        assert_eq!(
            e,
            "required variable \"NOPE\" is missing a value: need a port"
        );
        assert!(err("${EMPTY:?}").contains("\"EMPTY\" is missing a value"));
        assert_eq!(ok("${EMPTY?x}").0, "");
        assert_eq!(ok("${PORT:+set}").0, "set");
        assert_eq!(ok("${NOPE:+set}").0, "");
        assert_eq!(ok("${EMPTY:+set}").0, "");
        assert_eq!(ok("${EMPTY+set}").0, "set");
    }

    #[test]
    fn invalid() {
        assert!(
            err("${HOME").contains("without its closing"),
            "{}",
            err("${HOME")
        );
        assert!(err("a $ b").contains("must be followed by"));
        assert!(err("$1").contains("must be followed by"));
        assert!(err("${}").contains("does not start with a variable name"));
        assert!(err("${HOME%x}").contains("expected"));
        assert!(err("${NOPE:-${A}").contains("without its closing"));
    }
}
