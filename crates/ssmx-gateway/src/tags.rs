//! Tags on managed instances and documents (RUNCOMMAND.md §4): kept in the gateway's SQLite
//! database, listed and changed through the SSM API, and matched by SendCommand's `tag:<name>`
//! and `tag-key` targets.

use rusqlite::params;

use crate::error::{ApiError, ErrorCode};
use crate::store::{Store, StoreError};

/// Tables of this module, created with the store's.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tags (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_type, resource_id, key)
);
CREATE INDEX IF NOT EXISTS tags_by_key ON tags(resource_type, key, value);
"#;

/// Tags one resource may carry.
pub const MAX_TAGS_PER_RESOURCE: usize = 50;
/// Longest tag key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest tag value, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// The kinds of resource that carry tags here (the API's `ResourceType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceType {
    /// A registered instance (`mi-…`).
    ManagedInstance,
    /// An SSM document.
    Document,
}

impl ResourceType {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::ManagedInstance => "ManagedInstance",
            ResourceType::Document => "Document",
        }
    }

    /// Parses the API's `ResourceType`; any other kind is InvalidResourceType.
    pub fn parse(name: &str) -> Result<Self, ApiError> {
        match name {
            "ManagedInstance" => Ok(ResourceType::ManagedInstance),
            "Document" => Ok(ResourceType::Document),
            other => Err(ApiError::new(
                ErrorCode::InvalidResourceType,
                format!(
                    "resource type {other:?} cannot be tagged here (ManagedInstance or Document)"
                ),
            )),
        }
    }
}

/// One tag.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    /// Its key.
    #[serde(rename = "Key")]
    pub key: String,
    /// Its value (may be empty).
    #[serde(rename = "Value", default)]
    pub value: String,
}

/// Checks a tag's key and value against AWS's limits.
pub fn validate(tag: &Tag) -> Result<(), ApiError> {
    let invalid = |msg: String| ApiError::new(ErrorCode::Validation, msg);
    let key_chars = tag.key.chars().count();
    if key_chars == 0 || key_chars > MAX_KEY_CHARS {
        return Err(invalid(format!(
            "tag key {:?} must be 1 to {MAX_KEY_CHARS} characters",
            tag.key
        )));
    }
    if tag.key.to_ascii_lowercase().starts_with("aws:") {
        return Err(invalid(format!(
            "tag key {:?}: keys starting with aws: are reserved",
            tag.key
        )));
    }
    if tag.value.chars().count() > MAX_VALUE_CHARS {
        return Err(invalid(format!(
            "the value of tag {:?} is over {MAX_VALUE_CHARS} characters",
            tag.key
        )));
    }
    Ok(())
}

/// What a SendCommand target selects instances by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagSelector<'a> {
    /// `tag:<name>`: the tag `name` with any of these values.
    Value {
        /// The tag's key.
        key: &'a str,
        /// Accepted values.
        values: &'a [String],
    },
    /// `tag-key`: any of these keys, whatever the value.
    AnyKey(&'a [String]),
}

impl<'a> TagSelector<'a> {
    /// The selector a target or filter key names (`tag:<name>` or `tag-key`), if it is one.
    pub fn from_key(key: &'a str, values: &'a [String]) -> Option<Self> {
        match key {
            "tag-key" => Some(TagSelector::AnyKey(values)),
            _ => key
                .strip_prefix("tag:")
                .filter(|name| !name.is_empty())
                .map(|key| TagSelector::Value { key, values }),
        }
    }
}

impl Store {
    /// Adds `tags` to a resource, replacing the values of keys it already has. Fails with
    /// TooManyTagsError, changing nothing, when the resource would carry more than
    /// [`MAX_TAGS_PER_RESOURCE`].
    pub fn add_tags(
        &self,
        kind: ResourceType,
        resource_id: &str,
        tags: &[Tag],
    ) -> Result<Result<(), ApiError>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for tag in tags {
            tx.execute(
                "INSERT INTO tags (resource_type, resource_id, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(resource_type, resource_id, key) DO UPDATE SET value = excluded.value",
                params![kind.as_str(), resource_id, tag.key, tag.value],
            )?;
        }
        let count: usize = tx.query_row(
            "SELECT COUNT(*) FROM tags WHERE resource_type = ?1 AND resource_id = ?2",
            params![kind.as_str(), resource_id],
            |r| r.get(0),
        )?;
        if count > MAX_TAGS_PER_RESOURCE {
            return Ok(Err(ApiError::new(
                ErrorCode::TooManyTags,
                format!(
                    "{resource_id} would carry {count} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed"
                ),
            )));
        }
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Removes the tags with these keys from a resource; keys it does not carry are ignored.
    pub fn remove_tags(
        &self,
        kind: ResourceType,
        resource_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for key in keys {
            tx.execute(
                "DELETE FROM tags WHERE resource_type = ?1 AND resource_id = ?2 AND key = ?3",
                params![kind.as_str(), resource_id, key],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A resource's tags, by key.
    pub fn tags(&self, kind: ResourceType, resource_id: &str) -> Result<Vec<Tag>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT key, value FROM tags WHERE resource_type = ?1 AND resource_id = ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), resource_id], |r| {
            Ok(Tag {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of the managed instances `selector` matches, sorted.
    pub fn instances_tagged(&self, selector: &TagSelector<'_>) -> Result<Vec<String>, StoreError> {
        // (key, value): a `None` value matches any.
        let pairs: Vec<(&str, Option<&str>)> = match selector {
            TagSelector::Value { key, values } => {
                values.iter().map(|v| (*key, Some(v.as_str()))).collect()
            }
            TagSelector::AnyKey(keys) => keys.iter().map(|k| (k.as_str(), None)).collect(),
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT resource_id FROM tags
             WHERE resource_type = ?1 AND key = ?2 AND (?3 IS NULL OR value = ?3)",
        )?;
        let mut ids = Vec::new();
        for (key, value) in pairs {
            let rows = stmt.query_map(
                params![ResourceType::ManagedInstance.as_str(), key, value],
                |r| r.get::<_, String>(0),
            )?;
            for id in rows {
                ids.push(id?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;

    fn tag(key: &str, value: &str) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn tags_are_replaced_by_key_removed_and_matched() {
        let store = Store::open(&Database::Memory).unwrap();
        let mi = ResourceType::ManagedInstance;
        store
            .add_tags(mi, "mi-a", &[tag("Env", "prod"), tag("Role", "web")])
            .unwrap()
            .unwrap();
        store
            .add_tags(mi, "mi-b", &[tag("Env", "dev")])
            .unwrap()
            .unwrap();
        store
            .add_tags(mi, "mi-b", &[tag("Env", "prod")])
            .unwrap()
            .unwrap();
        assert_eq!(store.tags(mi, "mi-b").unwrap(), vec![tag("Env", "prod")]);
        let prod = ["prod".to_owned()];
        let by_value = TagSelector::Value {
            key: "Env",
            values: &prod,
        };
        assert_eq!(store.instances_tagged(&by_value).unwrap(), ["mi-a", "mi-b"]);
        let role = ["Role".to_owned()];
        assert_eq!(
            store.instances_tagged(&TagSelector::AnyKey(&role)).unwrap(),
            ["mi-a"]
        );
        store.remove_tags(mi, "mi-a", &role).unwrap();
        assert!(store
            .instances_tagged(&TagSelector::AnyKey(&role))
            .unwrap()
            .is_empty());
        // Documents with the same id are another resource.
        assert!(store
            .tags(ResourceType::Document, "mi-a")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn more_than_fifty_tags_change_nothing() {
        let store = Store::open(&Database::Memory).unwrap();
        let mi = ResourceType::ManagedInstance;
        let many: Vec<Tag> = (0..MAX_TAGS_PER_RESOURCE)
            .map(|i| tag(&format!("k{i}"), "v"))
            .collect();
        store.add_tags(mi, "mi-a", &many).unwrap().unwrap();
        let err = store
            .add_tags(mi, "mi-a", &[tag("one-more", "v"), tag("k0", "changed")])
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyTags);
        let kept = store.tags(mi, "mi-a").unwrap();
        assert_eq!(kept.len(), MAX_TAGS_PER_RESOURCE);
        assert!(kept.contains(&tag("k0", "v")));
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert!(validate(&tag("Env", "")).is_ok());
        assert!(validate(&tag("", "x")).is_err());
        assert!(validate(&tag(&"k".repeat(129), "x")).is_err());
        assert!(validate(&tag("k", &"v".repeat(257))).is_err());
        assert!(validate(&tag("aws:cloudformation", "x")).is_err());
    }
}
