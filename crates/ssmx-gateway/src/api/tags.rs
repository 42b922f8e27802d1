//! Tag operations: AddTagsToResource, RemoveTagsFromResource, ListTagsForResource on managed
//! instances and documents.

use serde::Deserialize;
use serde_json::json;

use super::ApiResult;
use crate::catalog::{self, Owner, Version};
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::tags::{self, ResourceType, Tag};

#[derive(Debug, Deserialize)]
pub(super) struct AddTagsInput {
    #[serde(rename = "ResourceType", default)]
    resource_type: String,
    #[serde(rename = "ResourceId", default)]
    resource_id: String,
    #[serde(rename = "Tags", default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RemoveTagsInput {
    #[serde(rename = "ResourceType", default)]
    resource_type: String,
    #[serde(rename = "ResourceId", default)]
    resource_id: String,
    #[serde(rename = "TagKeys", default)]
    tag_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListTagsInput {
    #[serde(rename = "ResourceType", default)]
    resource_type: String,
    #[serde(rename = "ResourceId", default)]
    resource_id: String,
}

/// The resource a tag call names, checked to exist and to be taggable by users.
fn resource(hub: &Hub, kind: &str, id: &str) -> Result<ResourceType, ApiError> {
    let kind = ResourceType::parse(kind)?;
    let missing = |why: &str| ApiError::new(ErrorCode::InvalidResourceId, format!("{id}: {why}"));
    match kind {
        ResourceType::ManagedInstance => {
            if hub.store.instance(id)?.is_none() {
                return Err(missing("no managed instance has this id"));
            }
        }
        ResourceType::Document => {
            let document = catalog::find(&hub.store, &hub.documents, id, Version::Default)
                .map_err(|_| missing("no document has this name"))?;
            if document.owner == Owner::Amazon {
                return Err(missing("documents owned by AWS cannot be tagged"));
            }
        }
    }
    Ok(kind)
}

pub(super) fn add_tags_to_resource(hub: &Hub, input: AddTagsInput) -> ApiResult {
    let kind = resource(hub, &input.resource_type, &input.resource_id)?;
    if input.tags.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Validation,
            "Tags must hold at least one tag",
        ));
    }
    for tag in &input.tags {
        tags::validate(tag)?;
    }
    hub.store
        .add_tags(kind, &input.resource_id, &input.tags)??;
    Ok(json!({}))
}

pub(super) fn remove_tags_from_resource(hub: &Hub, input: RemoveTagsInput) -> ApiResult {
    let kind = resource(hub, &input.resource_type, &input.resource_id)?;
    hub.store
        .remove_tags(kind, &input.resource_id, &input.tag_keys)?;
    Ok(json!({}))
}

pub(super) fn list_tags_for_resource(hub: &Hub, input: ListTagsInput) -> ApiResult {
    let kind = resource(hub, &input.resource_type, &input.resource_id)?;
    let tags = hub.store.tags(kind, &input.resource_id)?;
    Ok(json!({ "TagList": tags }))
}
