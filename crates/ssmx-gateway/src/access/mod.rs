//! Who may do what: the users, groups and IAM-shaped policies of the configuration, resolved
//! into one [`Principal`] per user, and the checks every operation makes against them.
//!
//! A configuration without `[[users]]` and `[[groups]]` is a first run: every credential's user
//! gets the built-in `FirstRunAccess` policy, everything but resuming and terminating other
//! users' sessions. Once users are configured, a user has exactly
//! the policies attached to it and to its groups, and a credential whose user is not listed may
//! do nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::config::ApiCredential;
use crate::error::{ApiError, ErrorCode};

pub mod policy;

use policy::{Context, Decision, Policy, PolicyError, Request, Statement};

/// Name of the built-in policy that allows everything.
pub const ADMINISTRATOR_POLICY: &str = "AdministratorAccess";
/// Name of the policy of every user on a first run: everything but resuming and terminating
/// other users' sessions (their own they always may).
pub const FIRST_RUN_POLICY: &str = "FirstRunAccess";
/// The user tag naming the OS user a user's sessions run as, as on AWS.
pub const RUN_AS_TAG: &str = "SSMSessionRunAs";

/// `[[users]]`: a user of the API, with its groups, policies and tags.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name, as `user` of its `[[credentials]]`.
    pub name: String,
    /// Groups the user is in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Policies attached to the user itself.
    #[serde(default)]
    pub policies: Vec<String>,
    /// The user's tags (`SSMSessionRunAs` among them), also the `aws:PrincipalTag/<key>`
    /// condition keys.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The OS user its sessions run as; overrides the `SSMSessionRunAs` tag.
    pub run_as: Option<String>,
}

/// `[[groups]]`: policies shared by the users in a group.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name.
    pub name: String,
    /// Policies attached to the group.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// `[[policies]]`: a named IAM policy document, inline or in a file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The name users and groups attach it by.
    pub name: String,
    /// The JSON document itself.
    pub document: Option<String>,
    /// A file holding the JSON document.
    pub file: Option<PathBuf>,
}

/// A configuration of users, groups and policies that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessConfigError {
    /// A policy's document does not parse.
    #[error("policy {name:?}: {source}")]
    Policy {
        /// The policy's name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: PolicyError,
    },
    /// A policy's file cannot be read.
    #[error("policy {name:?}: cannot read {}", path.display())]
    PolicyFile {
        /// The policy's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anything else: unknown names, duplicates, a policy with neither document nor file.
    #[error("{0}")]
    Invalid(String),
}

/// A user as the policies see it.
#[derive(Debug)]
pub struct Principal {
    /// The user's name.
    pub name: String,
    /// `arn:aws:iam::<account>:user/<name>`.
    pub arn: String,
    /// The user's tags.
    pub tags: BTreeMap<String, String>,
    run_as: Option<String>,
    /// The policies in force, with the names they were attached by.
    policies: Vec<(String, Arc<Policy>)>,
    /// Told the action of every refusal (see [`AccessControl::count_refusals`]).
    refusals: Arc<OnceLock<RefusalHook>>,
}

/// Told the action of every request the policies refuse (the gateway's metrics).
#[derive(Clone)]
pub struct RefusalHook(Arc<dyn Fn(&str) + Send + Sync>);

impl RefusalHook {
    /// A hook calling `count` with each refused action.
    pub fn new(count: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(count))
    }
}

impl std::fmt::Debug for RefusalHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalHook")
    }
}

/// How a request was decided, and by which statement.
#[derive(Clone, Debug)]
pub struct Evaluation<'p> {
    /// The decision.
    pub decision: Decision,
    /// The statement that made it (none for an implicit deny), with its policy's name.
    pub statement: Option<(&'p str, &'p Statement)>,
    /// Every allowing statement that matched (to see which conditions they carry).
    pub allowed_by: Vec<&'p Statement>,
}

impl Principal {
    /// The OS user this user's sessions run as when the session preferences enable run-as:
    /// the configured `run_as`, else the `SSMSessionRunAs` tag.
    pub fn run_as(&self) -> Option<&str> {
        self.run_as
            .as_deref()
            .or_else(|| self.tags.get(RUN_AS_TAG).map(String::as_str))
            .filter(|u| !u.is_empty())
    }

    /// The condition keys every request of this user carries.
    pub fn context(&self) -> Context {
        let mut context = Context::default();
        context.insert("aws:username", self.name.clone());
        context.insert("aws:userid", self.name.clone());
        context.insert("aws:PrincipalArn", self.arn.clone());
        for (key, value) in &self.tags {
            context.insert(&format!("aws:PrincipalTag/{key}"), value.clone());
        }
        context
    }

    /// Decides `request` against every policy of this user.
    pub fn evaluate(&self, request: &Request<'_>) -> Evaluation<'_> {
        let mut evaluation = Evaluation {
            decision: Decision::ImplicitDeny,
            statement: None,
            allowed_by: Vec::new(),
        };
        for (name, policy) in &self.policies {
            for statement in policy.matching(request) {
                match statement.effect {
                    policy::Effect::Deny => {
                        evaluation.decision = Decision::ExplicitDeny;
                        evaluation.statement = Some((name, statement));
                        return evaluation;
                    }
                    policy::Effect::Allow => {
                        if evaluation.statement.is_none() {
                            evaluation.decision = Decision::Allow;
                            evaluation.statement = Some((name, statement));
                        }
                        evaluation.allowed_by.push(statement);
                    }
                }
            }
        }
        evaluation
    }

    /// Checks that this user may perform `action` on `resource`; the refusal is AWS's
    /// AccessDeniedException, logged with user, action and resource.
    pub fn authorize(&self, action: &str, resource: &Resource) -> Result<(), ApiError> {
        self.decide(action, resource, false).map(drop)
    }

    /// Like [`Principal::authorize`], for a resource that may be the user's own (a session
    /// they started): their own is allowed unless a policy denies it.
    pub fn authorize_owned(
        &self,
        action: &str,
        resource: &Resource,
        own: bool,
    ) -> Result<(), ApiError> {
        self.decide(action, resource, own).map(drop)
    }

    /// The check behind [`Principal::authorize`] and [`Principal::authorize_owned`]: on success,
    /// the evaluation (which statements allowed it).
    pub fn decide(
        &self,
        action: &str,
        resource: &Resource,
        own: bool,
    ) -> Result<Evaluation<'_>, ApiError> {
        let context = resource.context(self);
        let request = Request {
            action,
            resource: &resource.arn,
            context: &context,
        };
        let evaluation = self.evaluate(&request);
        match evaluation.decision {
            Decision::Allow => Ok(evaluation),
            Decision::ImplicitDeny if own => Ok(evaluation),
            decision => Err(self.refusal(action, &resource.arn, decision, &evaluation)),
        }
    }

    /// The AccessDeniedException for a refused request, logged.
    fn refusal(
        &self,
        action: &str,
        resource: &str,
        decision: Decision,
        evaluation: &Evaluation<'_>,
    ) -> ApiError {
        let because = match decision {
            Decision::ExplicitDeny => "with an explicit deny in an identity-based policy".into(),
            _ => format!("because no identity-based policy allows the {action} action"),
        };
        let deciding = evaluation
            .statement
            .map(|(policy, s)| describe_statement(policy, s))
            .unwrap_or_default();
        tracing::info!(user = %self.name, %action, %resource, decision = ?decision, statement = %deciding, "access denied");
        if let Some(hook) = self.refusals.get() {
            (hook.0)(action);
        }
        ApiError::new(
            ErrorCode::AccessDenied,
            format!(
                "User: {} is not authorized to perform: {action} on resource: {resource} {because}",
                self.arn
            ),
        )
    }
}

/// `statement 1 ("NoProd") of policy "operators"`.
pub fn describe_statement(policy: &str, statement: &Statement) -> String {
    match &statement.sid {
        Some(sid) => format!(
            "statement {} ({sid:?}) of policy {policy:?}",
            statement.index
        ),
        None => format!("statement {} of policy {policy:?}", statement.index),
    }
}

/// A resource a request acts on: its ARN and its tags (the `ssm:resourceTag/<key>` keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Its ARN, or `*`.
    pub arn: String,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

impl Resource {
    /// `*`: the resource of operations without resource-level permissions.
    pub fn any() -> Self {
        Resource {
            arn: "*".into(),
            tags: Vec::new(),
        }
    }

    /// A resource without tags.
    pub fn untagged(arn: String) -> Self {
        Resource {
            arn,
            tags: Vec::new(),
        }
    }

    fn context(&self, principal: &Principal) -> Context {
        let mut context = principal.context();
        for (key, value) in &self.tags {
            context.insert(&format!("ssm:resourceTag/{key}"), value.clone());
            context.insert(&format!("aws:ResourceTag/{key}"), value.clone());
        }
        context
    }
}

/// ARNs of the gateway's resources, as AWS forms them.
#[derive(Clone, Debug)]
pub struct Arns {
    /// The region in the ARNs.
    pub region: String,
    /// The account id in the ARNs.
    pub account_id: String,
}

impl Arns {
    /// An API user.
    pub fn user(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:user/{name}", self.account_id)
    }

    /// A node: `i-…` ids are EC2 instances, the rest managed instances.
    pub fn instance(&self, instance_id: &str) -> String {
        if instance_id.starts_with("i-") {
            format!(
                "arn:aws:ec2:{}:{}:instance/{instance_id}",
                self.region, self.account_id
            )
        } else {
            format!(
                "arn:aws:ssm:{}:{}:managed-instance/{instance_id}",
                self.region, self.account_id
            )
        }
    }

    /// A document by name (or its ARN as given); AWS-owned documents have no account.
    pub fn document(&self, name: &str) -> String {
        if name.starts_with("arn:") {
            return name.to_owned();
        }
        let account = if name.starts_with("AWS-") {
            ""
        } else {
            &self.account_id
        };
        format!("arn:aws:ssm:{}:{account}:document/{name}", self.region)
    }

    /// A session.
    pub fn session(&self, session_id: &str) -> String {
        format!(
            "arn:aws:ssm:{}:{}:session/{session_id}",
            self.region, self.account_id
        )
    }

    /// A KMS key.
    pub fn key(&self, key_id: &str) -> String {
        if key_id.starts_with("arn:") {
            return key_id.to_owned();
        }
        format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            self.region, self.account_id
        )
    }
}

/// The API's credentials and the principals behind them, as one configuration resolved them.
/// Replaced as a whole when the configuration is reloaded.
#[derive(Debug)]
pub struct AccessControl {
    credentials: HashMap<String, (ApiCredential, Arc<Principal>)>,
    principals: HashMap<String, Arc<Principal>>,
    refusals: Arc<OnceLock<RefusalHook>>,
}

impl AccessControl {
    /// Resolves credentials, users, groups and policies; refuses unknown or duplicate names
    /// and policies that do not parse.
    pub fn build(
        credentials: &[ApiCredential],
        users: &[UserConfig],
        groups: &[GroupConfig],
        policies: &[PolicyConfig],
        arns: &Arns,
    ) -> Result<Self, AccessConfigError> {
        let invalid = |m: String| AccessConfigError::Invalid(m);
        let refusals: Arc<OnceLock<RefusalHook>> = Arc::default();
        let mut documents: HashMap<&str, Arc<Policy>> = HashMap::new();
        documents.insert(ADMINISTRATOR_POLICY, Arc::new(Policy::administrator()));
        documents.insert(
            FIRST_RUN_POLICY,
            Arc::new(Policy::allow_all_but(&[
                "ssm:ResumeSession",
                "ssm:TerminateSession",
            ])),
        );
        for p in policies {
            let text = match (&p.document, &p.file) {
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|source| {
                    AccessConfigError::PolicyFile {
                        name: p.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?,
                _ => {
                    return Err(invalid(format!(
                        "policy {:?} needs exactly one of document and file",
                        p.name
                    )))
                }
            };
            let parsed = Policy::parse(&text).map_err(|source| AccessConfigError::Policy {
                name: p.name.clone(),
                source,
            })?;
            if documents.insert(&p.name, Arc::new(parsed)).is_some() {
                return Err(invalid(format!(
                    "policy {:?} is defined twice (or shadows a built-in policy)",
                    p.name
                )));
            }
        }
        let attach = |owner: &str,
                      names: &[String]|
         -> Result<Vec<(String, Arc<Policy>)>, AccessConfigError> {
            names
                .iter()
                .map(|n| {
                    documents
                        .get(n.as_str())
                        .map(|p| (n.clone(), p.clone()))
                        .ok_or_else(|| invalid(format!("{owner} attaches unknown policy {n:?}")))
                })
                .collect()
        };
        let mut group_policies = HashMap::new();
        for g in groups {
            let attached = attach(&format!("group {:?}", g.name), &g.policies)?;
            if group_policies.insert(g.name.as_str(), attached).is_some() {
                return Err(invalid(format!("group {:?} is defined twice", g.name)));
            }
        }
        let first_run = users.is_empty() && groups.is_empty();
        let mut principals = HashMap::new();
        for u in users {
            let mut attached = attach(&format!("user {:?}", u.name), &u.policies)?;
            for g in &u.groups {
                let from_group = group_policies.get(g.as_str()).ok_or_else(|| {
                    invalid(format!("user {:?} is in unknown group {g:?}", u.name))
                })?;
                attached.extend(from_group.iter().cloned());
            }
            let principal = Principal {
                name: u.name.clone(),
                arn: arns.user(&u.name),
                tags: u.tags.clone(),
                run_as: u.run_as.clone(),
                policies: attached,
                refusals: refusals.clone(),
            };
            if principals
                .insert(u.name.clone(), Arc::new(principal))
                .is_some()
            {
                return Err(invalid(format!("user {:?} is defined twice", u.name)));
            }
        }
        let mut by_key = HashMap::new();
        for cred in credentials {
            let principal = principals.entry(cred.user.clone()).or_insert_with(|| {
                if !first_run {
                    tracing::warn!(user = %cred.user, "credential of a user without [[users]] entry: every call it signs is denied");
                }
                Arc::new(Principal {
                    name: cred.user.clone(),
                    arn: arns.user(&cred.user),
                    tags: BTreeMap::new(),
                    run_as: None,
                    policies: if first_run {
                        vec![(
                            FIRST_RUN_POLICY.to_owned(),
                            documents[FIRST_RUN_POLICY].clone(),
                        )]
                    } else {
                        Vec::new()
                    },
                    refusals: refusals.clone(),
                })
            });
            by_key.insert(
                cred.access_key_id.clone(),
                (cred.clone(), principal.clone()),
            );
        }
        Ok(AccessControl {
            credentials: by_key,
            principals,
            refusals,
        })
    }

    /// Has `hook` told of every refusal of these users' requests, wherever it is decided.
    pub fn count_refusals(&self, hook: RefusalHook) {
        let _ = self.refusals.set(hook);
    }

    /// The credential with this access key id and its principal.
    pub fn credential(&self, access_key_id: &str) -> Option<&(ApiCredential, Arc<Principal>)> {
        self.credentials.get(access_key_id)
    }

    /// A user by name.
    pub fn principal(&self, user: &str) -> Option<&Arc<Principal>> {
        self.principals.get(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arns() -> Arns {
        Arns {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }

    fn cred(user: &str) -> ApiCredential {
        ApiCredential::new(&format!("AKID{user}"), "secret", user)
    }

    const DEV_ONLY: &str = r#"{"Statement":[{"Effect":"Allow","Action":"ssm:StartSession",
        "Resource":"*","Condition":{"StringEquals":{"ssm:resourceTag/env":"dev"}}}]}"#;
    const NO_PROD: &str = r#"{"Statement":[{"Effect":"Deny","Action":"ssm:*","Resource":"*",
        "Condition":{"StringEquals":{"ssm:resourceTag/env":"prod"}}}]}"#;

    fn resource(env: &str) -> Resource {
        Resource {
            arn: arns().instance("mi-0aa"),
            tags: vec![("env".into(), env.into())],
        }
    }

    #[test]
    fn every_refusal_and_only_refusals_reach_the_hook() {
        let access = AccessControl::build(&[cred("a")], &[], &[], &[], &arns()).unwrap();
        let told = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = told.clone();
        access.count_refusals(RefusalHook::new(move |action| {
            sink.lock().unwrap().push(action.to_owned())
        }));
        let (_, principal) = access.credential("AKIDa").unwrap();
        principal
            .authorize("ssm:SendCommand", &resource("dev"))
            .unwrap();
        let session = Resource::untagged(arns().session("b-0123"));
        assert!(principal
            .authorize("ssm:TerminateSession", &session)
            .is_err());
        principal
            .authorize_owned("ssm:TerminateSession", &session, true)
            .unwrap();
        assert_eq!(*told.lock().unwrap(), ["ssm:TerminateSession"]);
    }

    #[test]
    fn first_run_allows_all_but_other_users_sessions() {
        let access = AccessControl::build(&[cred("a")], &[], &[], &[], &arns()).unwrap();
        let (_, principal) = access.credential("AKIDa").unwrap();
        principal
            .authorize("ssm:SendCommand", &resource("prod"))
            .unwrap();
        let session = Resource::untagged(arns().session("b-0a"));
        assert!(principal
            .authorize("ssm:TerminateSession", &session)
            .is_err());
        principal
            .authorize_owned("ssm:TerminateSession", &session, true)
            .unwrap();
    }

    #[test]
    fn users_get_their_own_and_their_groups_policies_and_deny_wins() {
        let policies = [
            PolicyConfig {
                name: "dev".into(),
                document: Some(DEV_ONLY.into()),
                file: None,
            },
            PolicyConfig {
                name: "no-prod".into(),
                document: Some(NO_PROD.into()),
                file: None,
            },
        ];
        let groups = [GroupConfig {
            name: "guarded".into(),
            policies: vec!["no-prod".into(), ADMINISTRATOR_POLICY.into()],
        }];
        let users = [
            UserConfig {
                name: "dev".into(),
                policies: vec!["dev".into()],
                ..Default::default()
            },
            UserConfig {
                name: "ops".into(),
                groups: vec!["guarded".into()],
                tags: [(RUN_AS_TAG.to_owned(), "opsuser".to_owned())].into(),
                ..Default::default()
            },
        ];
        let creds = [cred("dev"), cred("ops"), cred("stranger")];
        let access = AccessControl::build(&creds, &users, &groups, &policies, &arns()).unwrap();
        let dev = &access.credential("AKIDdev").unwrap().1;
        dev.authorize("ssm:StartSession", &resource("dev")).unwrap();
        let err = dev
            .authorize("ssm:StartSession", &resource("prod"))
            .unwrap_err();
        assert_eq!(
            err.message,
            "User: arn:aws:iam::000000000000:user/dev is not authorized to perform: \
             ssm:StartSession on resource: arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0aa \
             because no identity-based policy allows the ssm:StartSession action"
        );
        let ops = &access.credential("AKIDops").unwrap().1;
        ops.authorize("ssm:SendCommand", &resource("dev")).unwrap();
        let err = ops
            .authorize("ssm:SendCommand", &resource("prod"))
            .unwrap_err();
        assert!(err
            .message
            .ends_with("with an explicit deny in an identity-based policy"));
        assert_eq!(ops.run_as(), Some("opsuser"));
        assert_eq!(dev.run_as(), None);
        // Users are configured, so a credential without a [[users]] entry may do nothing.
        let stranger = &access.credential("AKIDstranger").unwrap().1;
        assert!(stranger
            .authorize("ssm:DescribeSessions", &Resource::any())
            .is_err());
    }

    #[test]
    fn decide_reports_the_allowing_statements_under_the_resources_tags() {
        let policies = [PolicyConfig {
            name: "dev-check".into(),
            document: Some(
                r#"{"Statement":{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*",
                    "Condition":{"StringEquals":{"ssm:resourceTag/env":"dev"},
                                 "BoolIfExists":{"ssm:SessionDocumentAccessCheck":"true"}}}}"#
                    .into(),
            ),
            file: None,
        }];
        let users = [UserConfig {
            name: "dev".into(),
            policies: vec!["dev-check".into()],
            ..Default::default()
        }];
        let access = AccessControl::build(&[cred("dev")], &users, &[], &policies, &arns()).unwrap();
        let dev = access.principal("dev").unwrap();
        let allowed = dev
            .decide("ssm:StartSession", &resource("dev"), false)
            .unwrap();
        assert!(allowed.allowed_by.iter().any(|s| s.asks_document_check()));
        assert!(dev
            .decide("ssm:StartSession", &resource("prod"), false)
            .is_err());
    }

    #[test]
    fn unknown_names_and_bad_documents_are_refused() {
        let user = |policies: Vec<String>, groups: Vec<String>| UserConfig {
            name: "u".into(),
            policies,
            groups,
            ..Default::default()
        };
        let err =
            AccessControl::build(&[], &[user(vec!["nope".into()], vec![])], &[], &[], &arns())
                .unwrap_err();
        assert!(err.to_string().contains("unknown policy \"nope\""), "{err}");
        let err = AccessControl::build(&[], &[user(vec![], vec!["g".into()])], &[], &[], &arns())
            .unwrap_err();
        assert!(err.to_string().contains("unknown group \"g\""), "{err}");
        let bad = PolicyConfig {
            name: "bad".into(),
            document: Some("{".into()),
            file: None,
        };
        let err = AccessControl::build(&[], &[], &[], &[bad], &arns()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("policy \"bad\": invalid policy document"),
            "{err}"
        );
        let shadow = PolicyConfig {
            name: ADMINISTRATOR_POLICY.into(),
            document: Some(DEV_ONLY.into()),
            file: None,
        };
        assert!(AccessControl::build(&[], &[], &[], &[shadow], &arns()).is_err());
    }

    #[test]
    fn arns_follow_aws() {
        let a = arns();
        assert_eq!(
            a.instance("i-0123"),
            "arn:aws:ec2:us-east-1:000000000000:instance/i-0123"
        );
        assert_eq!(
            a.document("AWS-StartPortForwardingSession"),
            "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession"
        );
        assert_eq!(
            a.document("SSM-SessionManagerRunShell"),
            "arn:aws:ssm:us-east-1:000000000000:document/SSM-SessionManagerRunShell"
        );
        assert_eq!(
            a.session("alice-0a"),
            "arn:aws:ssm:us-east-1:000000000000:session/alice-0a"
        );
    }
}
