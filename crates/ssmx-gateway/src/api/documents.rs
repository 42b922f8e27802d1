//! Document operations: CreateDocument, GetDocument, DescribeDocument, ListDocuments,
//! UpdateDocument, UpdateDocumentDefaultVersion, DeleteDocument.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{epoch_seconds, paginate, validation, ApiResult};
use crate::catalog::{self, Document, DocumentType, Format, Owner, Version};
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::tags::{self, ResourceType, Tag};

const DEFAULT_DOCUMENT_PAGE: u64 = 50;
const MAX_DOCUMENT_PAGE: u64 = 50;

#[derive(Debug, Deserialize)]
pub(super) struct CreateDocumentInput {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Content", default)]
    content: String,
    #[serde(rename = "DocumentType")]
    document_type: Option<String>,
    #[serde(rename = "DocumentFormat")]
    document_format: Option<String>,
    #[serde(rename = "Tags", default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
pub(super) struct NamedVersionInput {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "DocumentVersion")]
    document_version: Option<String>,
    #[serde(rename = "DocumentFormat")]
    document_format: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UpdateDocumentInput {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Content", default)]
    content: String,
    #[serde(rename = "DocumentVersion")]
    document_version: Option<String>,
    #[serde(rename = "DocumentFormat")]
    document_format: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListDocumentsInput {
    #[serde(rename = "Filters", default)]
    filters: Vec<KeyValuesFilter>,
    #[serde(rename = "DocumentFilterList", default)]
    document_filter_list: Vec<KeyValueFilter>,
    #[serde(rename = "MaxResults")]
    max_results: Option<i64>,
    #[serde(rename = "NextToken")]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeyValuesFilter {
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Values", default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct KeyValueFilter {
    #[serde(rename = "key", default)]
    key: String,
    #[serde(rename = "value", default)]
    value: String,
}

/// The platforms a document runs on, as the API lists them.
fn platform_types(document: &Document) -> Vec<&'static str> {
    let text = document.value.to_string();
    match document.document_type {
        DocumentType::Session => vec!["Windows", "Linux", "MacOS"],
        DocumentType::Command if text.contains("aws:runPowerShellScript") => vec!["Windows"],
        DocumentType::Command => vec!["Linux", "MacOS"],
    }
}

fn owner_name(hub: &Hub, document: &Document) -> String {
    match document.owner {
        Owner::Amazon => "Amazon".into(),
        Owner::Account => hub.settings.account_id.clone(),
    }
}

fn tags_of(hub: &Hub, document: &Document) -> Result<Vec<Tag>, ApiError> {
    Ok(hub.store.tags(ResourceType::Document, &document.name)?)
}

/// The `Parameters` list of a DocumentDescription.
fn parameters(document: &Document) -> Vec<Value> {
    let Some(definitions) = document.value.get("parameters").and_then(Value::as_object) else {
        return Vec::new();
    };
    definitions
        .iter()
        .map(|(name, def)| {
            let mut p = json!({
                "Name": name,
                "Type": def.get("type").and_then(Value::as_str).unwrap_or("String"),
                "Description": def.get("description").and_then(Value::as_str).unwrap_or(""),
            });
            if let Some(default) = def.get("default") {
                p["DefaultValue"] = match default {
                    Value::String(s) => json!(s),
                    other => json!(other.to_string()),
                };
            }
            p
        })
        .collect()
}

/// A `DocumentDescription`.
fn description(hub: &Hub, document: &Document) -> Result<Value, ApiError> {
    Ok(json!({
        "Name": document.name,
        "Hash": document.hash(),
        "HashType": "Sha256",
        "Owner": owner_name(hub, document),
        "CreatedDate": epoch_seconds(document.created_at),
        "Status": "Active",
        "DocumentVersion": document.version.to_string(),
        "Description": document.value.get("description").and_then(Value::as_str).unwrap_or(""),
        "Parameters": parameters(document),
        "PlatformTypes": platform_types(document),
        "DocumentType": document.document_type.as_str(),
        "SchemaVersion": document.schema_version(),
        "LatestVersion": document.latest_version.to_string(),
        "DefaultVersion": document.default_version.to_string(),
        "DocumentFormat": document.format.as_str(),
        "Tags": tags_of(hub, document)?,
    }))
}

/// A `DocumentIdentifier` of ListDocuments.
fn identifier(hub: &Hub, document: &Document) -> Result<Value, ApiError> {
    Ok(json!({
        "Name": document.name,
        "CreatedDate": epoch_seconds(document.created_at),
        "Owner": owner_name(hub, document),
        "PlatformTypes": platform_types(document),
        "DocumentVersion": document.version.to_string(),
        "DocumentType": document.document_type.as_str(),
        "SchemaVersion": document.schema_version(),
        "DocumentFormat": document.format.as_str(),
        "Tags": tags_of(hub, document)?,
    }))
}

fn find(hub: &Hub, name: &str, version: Option<&str>) -> Result<Document, ApiError> {
    catalog::find(&hub.store, &hub.documents, name, Version::parse(version)?)
}

/// The latest version of document `name`, refusing those that cannot change here (every one not
/// stored here but the preferences document).
fn changeable(hub: &Hub, name: &str) -> Result<Document, ApiError> {
    let document = find(hub, name, Some("$LATEST"))?;
    if !document.stored && !catalog::is_preferences(name) {
        let why = match document.owner {
            Owner::Amazon => "it is owned by AWS",
            Owner::Account => "it is loaded from the gateway's documents directory; edit the file",
        };
        return Err(ApiError::new(
            ErrorCode::InvalidDocumentOperation,
            format!("document {name} cannot be changed through the API: {why}"),
        ));
    }
    Ok(document)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(validation(format!(
            "Name {name:?} must match [a-zA-Z0-9_.-]{{3,128}}"
        )));
    }
    if catalog::reserved_name(name) {
        return Err(validation(format!(
            "Name {name:?}: names starting with aws, amazon or amzn are reserved"
        )));
    }
    Ok(())
}

pub(super) fn create_document(hub: &Hub, input: CreateDocumentInput) -> ApiResult {
    check_name(&input.name)?;
    let document_type = DocumentType::parse(input.document_type.as_deref())?;
    let format = Format::parse(input.document_format.as_deref())?;
    catalog::parse_content(&input.content, format, document_type)?;
    for tag in &input.tags {
        tags::validate(tag)?;
    }
    if find(hub, &input.name, None).is_ok() {
        return Err(ApiError::new(
            ErrorCode::DocumentAlreadyExists,
            format!("a document named {} already exists", input.name),
        ));
    }
    hub.store.add_document_version(
        &input.name,
        document_type,
        format,
        &input.content,
        SystemTime::now(),
    )?;
    if !input.tags.is_empty() {
        hub.store
            .add_tags(ResourceType::Document, &input.name, &input.tags)??;
    }
    let created = find(hub, &input.name, None)?;
    Ok(json!({ "DocumentDescription": description(hub, &created)? }))
}

pub(super) fn describe_document(hub: &Hub, input: NamedVersionInput) -> ApiResult {
    let document = find(hub, &input.name, input.document_version.as_deref())?;
    Ok(json!({ "Document": description(hub, &document)? }))
}

pub(super) fn get_document(hub: &Hub, input: NamedVersionInput) -> ApiResult {
    let document = find(hub, &input.name, input.document_version.as_deref())?;
    let format = Format::parse(input.document_format.as_deref())?;
    let content = match format == document.format {
        true => document.content.clone(),
        false => format.render(&document.value),
    };
    Ok(json!({
        "Name": document.name,
        "CreatedDate": epoch_seconds(document.created_at),
        "DocumentVersion": document.version.to_string(),
        "Status": "Active",
        "Content": content,
        "DocumentType": document.document_type.as_str(),
        "DocumentFormat": format.as_str(),
    }))
}

pub(super) fn list_documents(hub: &Hub, input: ListDocumentsInput) -> ApiResult {
    let filters: Vec<(String, Vec<String>)> = input
        .filters
        .into_iter()
        .map(|f| (f.key, f.values))
        .chain(
            input
                .document_filter_list
                .into_iter()
                .map(|f| (f.key, vec![f.value])),
        )
        .collect();
    let mut listed = Vec::new();
    for document in catalog::all(&hub.store, &hub.documents)? {
        if matches_filters(hub, &document, &filters)? {
            listed.push(document);
        }
    }
    let (page, next) = paginate(
        listed,
        input.max_results,
        input.next_token.as_deref(),
        (DEFAULT_DOCUMENT_PAGE, 1, MAX_DOCUMENT_PAGE),
    )?;
    let page = page
        .iter()
        .map(|d| identifier(hub, d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = json!({ "DocumentIdentifiers": page });
    if let Some(next) = next {
        out["NextToken"] = json!(next);
    }
    Ok(out)
}

/// ListDocuments' filters: every filter must match, any of its values.
fn matches_filters(
    hub: &Hub,
    document: &Document,
    filters: &[(String, Vec<String>)],
) -> Result<bool, ApiError> {
    for (key, values) in filters {
        let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
        let keep = match key.as_str() {
            "Name" => any(&|v| document.name.starts_with(v)),
            "Owner" => any(&|v| match v {
                "Self" | "Private" => document.owner == Owner::Account,
                "Amazon" | "Public" => document.owner == Owner::Amazon,
                "All" => true,
                _ => false,
            }),
            "DocumentType" => any(&|v| v == document.document_type.as_str()),
            "PlatformTypes" => any(&|v| platform_types(document).contains(&v)),
            "SchemaVersion" => any(&|v| v == document.schema_version()),
            key => match key.strip_prefix("tag:") {
                Some(tag_key) => {
                    let tags = tags_of(hub, document)?;
                    any(&|v| tags.iter().any(|t| t.key == tag_key && t.value == v))
                }
                None => {
                    return Err(validation(format!(
                        "filter key {key:?} is not supported (Name, Owner, DocumentType, PlatformTypes, SchemaVersion, tag:<key>)"
                    )))
                }
            },
        };
        if !keep {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn update_document(hub: &Hub, input: UpdateDocumentInput) -> ApiResult {
    let latest = changeable(hub, &input.name)?;
    match Version::parse(input.document_version.as_deref())? {
        Version::Latest => {}
        Version::Number(n) if n == latest.version => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidDocumentVersion,
                format!(
                    "DocumentVersion must be $LATEST or {}, the latest version of {}",
                    latest.version, input.name
                ),
            ))
        }
    }
    let format = Format::parse(input.document_format.as_deref())?;
    let value = catalog::parse_content(&input.content, format, latest.document_type)?;
    if value == latest.value {
        return Err(ApiError::new(
            ErrorCode::DuplicateDocumentContent,
            format!(
                "the content is that of version {} of {}",
                latest.version, input.name
            ),
        ));
    }
    let version = hub.store.add_document_version(
        &input.name,
        latest.document_type,
        format,
        &input.content,
        SystemTime::now(),
    )?;
    if catalog::is_preferences(&input.name) {
        // Updated preferences apply to the sessions that start next, as on AWS; a former
        // version can be made the default again.
        hub.store
            .set_default_document_version(&latest.name, version)?;
    }
    let updated = find(hub, &input.name, Some(&version.to_string()))?;
    Ok(json!({ "DocumentDescription": description(hub, &updated)? }))
}

pub(super) fn update_document_default_version(hub: &Hub, input: NamedVersionInput) -> ApiResult {
    changeable(hub, &input.name)?;
    let Version::Number(number) = Version::parse(input.document_version.as_deref())? else {
        return Err(ApiError::new(
            ErrorCode::InvalidDocumentVersion,
            "DocumentVersion must be a version number",
        ));
    };
    let document = find(hub, &input.name, Some(&number.to_string()))?;
    hub.store
        .set_default_document_version(&document.name, document.version)?;
    Ok(json!({
        "Description": {
            "Name": document.name,
            "DefaultVersion": document.version.to_string(),
        }
    }))
}

pub(super) fn delete_document(hub: &Hub, input: NamedVersionInput) -> ApiResult {
    let latest = changeable(hub, &input.name)?;
    if catalog::is_preferences(&input.name) && input.document_version.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidDocumentOperation,
            format!(
                "document {} holds the Session Manager preferences and cannot be deleted; make version 1 (the built-in one) the default instead",
                input.name
            ),
        ));
    }
    let version = match input.document_version.as_deref() {
        None => None,
        given => {
            let document = find(hub, &input.name, given)?;
            if document.version == latest.default_version {
                return Err(ApiError::new(
                    ErrorCode::InvalidDocumentOperation,
                    format!(
                        "version {} is the default of {}; make another version the default first, or delete the whole document",
                        document.version, input.name
                    ),
                ));
            }
            if !document.stored {
                return Err(ApiError::new(
                    ErrorCode::InvalidDocumentOperation,
                    format!(
                        "version {} of {} is built in and cannot be deleted",
                        document.version, input.name
                    ),
                ));
            }
            Some(document.version)
        }
    };
    hub.store.delete_document(&input.name, version)?;
    Ok(json!({}))
}
