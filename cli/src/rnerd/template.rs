//! docker's `--format`: `json`, `table` or a Go-template-like text where `{{.Field}}`,
//! `{{.A.B}}`, `{{json .}}` and `{{json .Field}}` are replaced from a JSON object; `\t` and
//! `\n` are a tab and a newline. Enough for scripts' usual uses; no pipelines or `range`.

use anyhow::{bail, Result};
use serde_json::Value;

/// A parsed `--format`.
pub enum Format {
    Table,
    Json,
    Template(String),
}

impl Format {
    pub fn parse(f: Option<&str>) -> Format {
        match f.map(str::trim) {
            None | Some("") | Some("table") => Format::Table,
            Some("json") | Some("{{json .}}") => Format::Json,
            Some(t) => Format::Template(t.to_owned()),
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Result<&'a Value> {
    let path = path.trim();
    if path == "." {
        return Ok(v);
    }
    let Some(rest) = path.strip_prefix('.') else {
        bail!("invalid template field {path:?}: fields start with '.', e.g. {{{{.ID}}}}");
    };
    let mut cur = v;
    for part in rest.split('.') {
        cur = match cur.get(part) {
            Some(x) => x,
            None => bail!("template: no field {part:?} in {path:?}"),
        };
    }
    Ok(cur)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".into(),
        other => other.to_string(),
    }
}

/// Renders `template` for `v`.
pub fn render(template: &str, v: &Value) -> Result<String> {
    let t = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("template {template:?}: '{{{{' without '}}}}'");
        };
        let action = after[..end].trim();
        if let Some(arg) = action.strip_prefix("json ") {
            out.push_str(&serde_json::to_string(lookup(v, arg)?)?);
        } else {
            out.push_str(&text(lookup(v, action)?));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates() {
        let v = json!({"ID": "abc", "State": {"Status": "running", "Pid": 7}, "L": ["a"]});
        assert_eq!(
            render("{{.ID}}\\t{{ .State.Status }}", &v).unwrap(),
            "abc\trunning"
        );
        assert_eq!(render("{{.State.Pid}}", &v).unwrap(), "7");
        assert_eq!(render("{{json .L}}", &v).unwrap(), "[\"a\"]");
        assert!(render("{{.Nope}}", &v)
            .unwrap_err()
            .to_string()
            .contains("Nope"));
        assert!(render("{{.ID", &v).is_err());
        assert!(render("{{ID}}", &v).is_err());
        assert!(matches!(Format::parse(Some("json")), Format::Json));
        assert!(matches!(Format::parse(None), Format::Table));
    }
}
