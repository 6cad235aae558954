//! Canonical JSON: object keys sorted by their bytes, no insignificant whitespace. Digests of
//! configs, manifests and indexes depend on every byte, so nothing here may depend on a map's
//! iteration order, whatever serde_json's features are in the build.

use serde::Serialize;
use serde_json::Value;

/// `value` as canonical JSON bytes.
pub fn canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write(&value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn keys_sorted_at_every_depth_whatever_the_map() {
        let mut inner = HashMap::new();
        for k in ["z", "a", "m", "B"] {
            inner.insert(k.to_string(), vec![k.to_string()]);
        }
        let v = serde_json::json!({ "b": inner, "a": [ { "y": 1, "x": "\u{e9}\"" } ] });
        assert_eq!(
            String::from_utf8(canonical(&v).unwrap()).unwrap(),
            r#"{"a":[{"x":"é\"","y":1}],"b":{"B":["B"],"a":["a"],"m":["m"],"z":["z"]}}"#
        );
    }
}
