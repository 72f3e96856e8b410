//! `telegram-updates`: turns the shared Telegram payload collection (`{"kind": "update"|"message",
//! "payload": …}` per line) into replay input, one Bot API `Update` per line.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Reads payload lines from `input` and writes one Update per line to `output`; a bare `message`
/// payload is wrapped as `{"update_id": N, "message": payload}` with N counting from `first_id`.
/// Returns (updates written, lines skipped); skipped lines are reported on stderr.
///
/// # Errors
///
/// Reading or writing fails.
pub fn convert(input: impl BufRead, mut output: impl Write, first_id: i64) -> Result<(u64, u64)> {
    let (mut written, mut skipped) = (0u64, 0u64);
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let update = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
            let payload = v.get("payload")?.clone();
            match v.get("kind")?.as_str()? {
                "update" => Some(payload),
                "message" => Some(json!({ "update_id": first_id + i as i64, "message": payload })),
                _ => None,
            }
        });
        match update {
            Some(u) => {
                serde_json::to_writer(&mut output, &u)?;
                output.write_all(b"\n")?;
                written += 1;
            }
            None => {
                eprintln!("line {}: skipped: not a {{\"kind\",\"payload\"}} record", i + 1);
                skipped += 1;
            }
        }
    }
    output.flush()?;
    Ok((written, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_wrapped_and_updates_pass_through() {
        let input = concat!(
            r#"{"kind":"message","payload":{"message_id":1,"date":5,"chat":{"id":9}}}"#,
            "\n",
            r#"{"kind":"update","payload":{"update_id":77,"edited_message":{"date":6,"chat":{"id":9}}}}"#,
            "\nnot json\n"
        );
        let mut out = Vec::new();
        assert_eq!(convert(input.as_bytes(), &mut out, 1000).unwrap(), (2, 1));
        let lines: Vec<Value> =
            out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines[0]["update_id"], 1000);
        assert_eq!(lines[0]["message"]["chat"]["id"], 9);
        assert_eq!(lines[1]["update_id"], 77);
    }
}
