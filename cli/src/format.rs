//! Small output helpers: human sizes and a minimal JSON value (the command's only JSON is `ps --json`,
//! which does not justify a serialisation framework).

use std::fmt::Write as _;

/// `1536` -> `1.50 KiB`, `4 << 30` -> `4.00 GiB`: three significant digits, binary units, at most 9
/// characters, so columns stay narrow.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // Rounding can carry into the next power (1023.9 KiB -> "1024 KiB"): fine, still honest and short.
    if value < 10.0 {
        format!("{value:.2} {}", UNITS[unit])
    } else if value < 100.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `used / limit`, or `used` alone when there is no limit.
pub fn used_of_limit(used: u64, limit: u64) -> String {
    if limit == 0 {
        format!("{} / -", bytes(used))
    } else {
        format!("{} / {}", bytes(used), bytes(limit))
    }
}

/// Cuts `s` to `width` characters, marking the cut with `~`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('~');
        out
    }
}

/// Cuts `s` to `width` characters from the left, marking the cut with `~` (for paths, whose end says
/// the most).
pub fn fit_left(s: &str, width: usize) -> String {
    let count = s.chars().count();
    if count <= width {
        s.to_string()
    } else {
        let mut out = String::from("~");
        out.extend(s.chars().skip(count - width.saturating_sub(1)));
        out
    }
}

/// Word-wraps `text` to `width` columns; lines after the first are indented by `indent` spaces.
pub fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line_len = indent;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out
}

/// A JSON value, written compactly by `Display`.
#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Uint(u) => {
                let _ = write!(out, "{u}");
            }
            Json::Str(s) => write_json_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        self.write(&mut out);
        f.write_str(&out)
    }
}

fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_short_and_binary() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(4 << 30), "4.00 GiB");
        assert_eq!(bytes(40 << 30), "40.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        assert_eq!(used_of_limit(1 << 30, 0), "1.00 GiB / -");
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(wrap("aa bb cc dd", 5, 2), "aa bb\n  cc\n  dd");
        assert_eq!(fit_left("/a/b/c.cache", 8), "~c.cache");
    }

    #[test]
    fn json_escapes_what_it_must() {
        let v = Json::Object(vec![
            ("a", Json::str("q\"\\\n\u{1}")),
            (
                "b",
                Json::Array(vec![
                    Json::Int(-1),
                    Json::Uint(2),
                    Json::Null,
                    Json::Bool(true),
                ]),
            ),
        ]);
        assert_eq!(
            v.to_string(),
            r#"{"a":"q\"\\\n\u0001","b":[-1,2,null,true]}"#
        );
    }
}
