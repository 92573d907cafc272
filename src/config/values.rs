//! Human-written values in agent.toml: durations (`"30s"`, `"10m"`) and sizes (`"2g"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// `"30s"`, `"1h 30m"`: humantime's forms.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| de::Error::custom(format!("`{text}` is not a duration like \"30s\": {e}")))
}

pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A byte count written like Docker's `--memory`: `512m`, `2g`, `1073741824`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let trimmed = text.trim().to_ascii_lowercase();
        let trimmed = trimmed.strip_suffix('b').unwrap_or(&trimmed);
        let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => trimmed.split_at(i),
            None => (trimmed, ""),
        };
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(format!("`{text}` is not a size like \"512m\" or \"2g\"")),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .filter(|n| *n > 0)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is not a size like \"512m\" or \"2g\""))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"512m\" or \"2g\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("2g"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("512MB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        for bad in ["", "0", "2x", "g", "-1m", "99999999999t"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
