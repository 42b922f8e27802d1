//! The policy check every SSM API call of a user makes: the action is `ssm:<Operation>`, the
//! resources those AWS names for the operation (instances, documents, sessions), `*` for
//! operations without resource-level permissions. StartSession and SendCommand check their
//! resources in their handlers, once the target and the document are known.

use serde_json::Value;

use crate::access::{Principal, Resource};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::tags::ResourceType;

/// The resources of a user call checked before its handler runs.
pub(super) fn check(
    hub: &Hub,
    principal: &Principal,
    op: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let action = format!("ssm:{op}");
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |field: &str| input.get(field).and_then(Value::as_str).map(str::to_owned);
    let resource = match op {
        // Checked by their handlers.
        "StartSession" | "SendCommand" => return Ok(()),
        "TerminateSession" | "ResumeSession" => {
            let Some(id) = text("SessionId") else {
                return Ok(());
            };
            return check_session(hub, principal, &action, &id);
        }
        "DeregisterManagedInstance" => match text("InstanceId") {
            Some(id) => instance(hub, &id)?,
            None => Resource::any(),
        },
        "CreateDocument"
        | "GetDocument"
        | "DescribeDocument"
        | "UpdateDocument"
        | "UpdateDocumentDefaultVersion"
        | "DeleteDocument" => match text("Name") {
            Some(name) => document(hub, &name)?,
            None => Resource::any(),
        },
        "AddTagsToResource" | "RemoveTagsFromResource" | "ListTagsForResource" => {
            match (text("ResourceType"), text("ResourceId")) {
                (Some(kind), Some(id)) => match ResourceType::parse(&kind) {
                    Ok(ResourceType::ManagedInstance) => instance(hub, &id)?,
                    Ok(ResourceType::Document) => document(hub, &id)?,
                    Err(_) => Resource::any(),
                },
                _ => Resource::any(),
            }
        }
        _ => Resource::any(),
    };
    principal.authorize(&action, &resource)
}

/// A user may resume and terminate their own sessions unless a policy denies it; anyone
/// else's only when a policy allows it on the session's ARN.
fn check_session(
    hub: &Hub,
    principal: &Principal,
    action: &str,
    session_id: &str,
) -> Result<(), ApiError> {
    let owner = match hub.session(session_id) {
        Some(live) => Some(live.owner_arn.clone()),
        None => hub.store.session(session_id)?.map(|s| s.owner),
    };
    // An unknown session guards nothing: the handler says it does not exist.
    let Some(owner) = owner else {
        return Ok(());
    };
    let resource = Resource::untagged(hub.settings.arns().session(session_id));
    principal.authorize_owned(action, &resource, owner == principal.arn)
}

/// StartSession is allowed on the target, and on the document when one is named; the default
/// document is checked too when the statement allowing the target asks for it with
/// `ssm:SessionDocumentAccessCheck` (as AWS does).
pub(super) fn session_start(
    hub: &Hub,
    principal: &Principal,
    target: &str,
    named_document: Option<&str>,
    default_document: &str,
) -> Result<(), ApiError> {
    const ACTION: &str = "ssm:StartSession";
    let allowed = principal.decide(ACTION, &instance(hub, target)?, false)?;
    let check_document =
        named_document.is_some() || allowed.allowed_by.iter().any(|s| s.asks_document_check());
    if check_document {
        principal.authorize(
            ACTION,
            &document(hub, named_document.unwrap_or(default_document))?,
        )?;
    }
    Ok(())
}

/// A user who signs a session's data-channel upgrade must, under the policies in force now,
/// still be allowed to start that session (its target and document), and must own the session
/// or be allowed to resume it. An ended or unknown session passes: the token check that
/// follows refuses it.
pub(crate) fn data_channel_upgrade(
    hub: &Hub,
    principal: &Principal,
    session_id: &str,
) -> Result<(), ApiError> {
    let Some(session) = hub.session(session_id) else {
        return Ok(());
    };
    let named = session.document_named.then_some(session.document.as_str());
    session_start(hub, principal, &session.target, named, &session.document)?;
    let resource = Resource::untagged(hub.settings.arns().session(session_id));
    principal.authorize_owned(
        "ssm:ResumeSession",
        &resource,
        session.owner_arn == principal.arn,
    )
}

/// An instance with its tags.
pub(super) fn instance(hub: &Hub, instance_id: &str) -> Result<Resource, ApiError> {
    let tags = hub.store.tags(ResourceType::ManagedInstance, instance_id)?;
    Ok(Resource {
        arn: hub.instance_arn(instance_id),
        tags: tags.into_iter().map(|t| (t.key, t.value)).collect(),
    })
}

/// A document with its tags.
pub(super) fn document(hub: &Hub, name: &str) -> Result<Resource, ApiError> {
    let tags = hub.store.tags(ResourceType::Document, name)?;
    Ok(Resource {
        arn: hub.settings.arns().document(name),
        tags: tags.into_iter().map(|t| (t.key, t.value)).collect(),
    })
}
