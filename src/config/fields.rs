//! The keys a settings struct accepts, read from its own `Deserialize` impl, so unknown
//! keys are found (and near misses suggested) without a second list to keep in step.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The field names `T` deserializes (serde's renames applied); empty for what is not a
/// struct.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A deserializer that only records the fields a struct asks for, then stops.
struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::field_names;
    use crate::config::{AgentConfig, DockerSection, ScheduleSource};

    #[test]
    fn fields_come_from_the_structs_with_their_renames() {
        assert_eq!(
            field_names::<AgentConfig>(),
            ["agent", "docker", "secrets", "source", "notify"]
        );
        assert!(field_names::<DockerSection>().contains(&"allow_host_mounts"));
        assert!(field_names::<ScheduleSource>().contains(&"ref"));
        assert!(field_names::<String>().is_empty());
    }
}
