//! IAM-shaped identity policies: the JSON document, and deciding one request against a set of
//! them the way IAM does for identity-based policies: an explicit deny wins, then an allow,
//! and nothing is allowed that no statement allows.
//!
//! ```
//! use ssmx_gateway::access::policy::{Context, Decision, Policy, Request};
//!
//! let policy = Policy::parse(r#"{
//!     "Version": "2012-10-17",
//!     "Statement": [{
//!         "Effect": "Allow",
//!         "Action": "ssm:StartSession",
//!         "Resource": "arn:aws:ssm:*:*:managed-instance/*",
//!         "Condition": {"StringEquals": {"ssm:resourceTag/env": "dev"}}
//!     }]
//! }"#).unwrap();
//! let mut context = Context::default();
//! context.insert("ssm:resourceTag/env", "dev");
//! let request = Request {
//!     action: "ssm:StartSession",
//!     resource: "arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0123456789abcdef0",
//!     context: &context,
//! };
//! assert!(matches!(policy.evaluate(&request), Some((Decision::Allow, _))));
//! ```

use std::collections::BTreeMap;

use serde_json::Value;

/// What a statement does to the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Grants them.
    Allow,
    /// Refuses them, whatever else allows them.
    Deny,
}

/// The outcome of evaluating a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows it and none denies it.
    Allow,
    /// A statement denies it.
    ExplicitDeny,
    /// No statement allows it.
    ImplicitDeny,
}

/// The request being decided.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `service:Operation`, e.g. `ssm:StartSession`.
    pub action: &'a str,
    /// The resource's ARN, or `*` for operations without resource-level permissions.
    pub resource: &'a str,
    /// Condition keys and their values.
    pub context: &'a Context,
}

/// Condition keys of a request (`aws:username`, `ssm:resourceTag/<key>`, …). Key names are
/// case-insensitive, as in IAM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    values: BTreeMap<String, String>,
}

impl Context {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.values.insert(key.to_ascii_lowercase(), value.into());
    }

    /// The value of `key`, if the request has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A policy document that does not follow the IAM grammar this gateway understands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid policy document: {0}")]
pub struct PolicyError(String);

fn invalid(message: impl Into<String>) -> PolicyError {
    PolicyError(message.into())
}

/// A parsed policy document.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// One statement of a policy, as it decided a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// Its `Sid`, if it has one.
    pub sid: Option<String>,
    /// Its place in the policy's `Statement` list, from 0.
    pub index: usize,
    /// Allow or Deny.
    pub effect: Effect,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

/// `Action`/`NotAction` or `Resource`/`NotResource`: patterns with `*` and `?`.
#[derive(Clone, Debug, PartialEq)]
struct Patterns {
    patterns: Vec<String>,
    negated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    ArnEquals,
    ArnLike,
    ArnNotEquals,
    ArnNotLike,
    Bool,
    Null,
}

impl Operator {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "StringEquals" => Operator::StringEquals,
            "StringNotEquals" => Operator::StringNotEquals,
            "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => Operator::StringNotEqualsIgnoreCase,
            "StringLike" => Operator::StringLike,
            "StringNotLike" => Operator::StringNotLike,
            "ArnEquals" => Operator::ArnEquals,
            "ArnLike" => Operator::ArnLike,
            "ArnNotEquals" => Operator::ArnNotEquals,
            "ArnNotLike" => Operator::ArnNotLike,
            "Bool" => Operator::Bool,
            "Null" => Operator::Null,
            _ => return None,
        })
    }

    fn negated(self) -> bool {
        matches!(
            self,
            Operator::StringNotEquals
                | Operator::StringNotEqualsIgnoreCase
                | Operator::StringNotLike
                | Operator::ArnNotEquals
                | Operator::ArnNotLike
        )
    }

    /// Whether `actual` matches one policy value (before negation).
    fn matches(self, actual: &str, expected: &str) -> bool {
        match self {
            Operator::StringEquals | Operator::StringNotEquals => actual == expected,
            Operator::StringEqualsIgnoreCase | Operator::StringNotEqualsIgnoreCase => {
                actual.eq_ignore_ascii_case(expected)
            }
            Operator::StringLike
            | Operator::StringNotLike
            | Operator::ArnEquals
            | Operator::ArnNotEquals
            | Operator::ArnLike
            | Operator::ArnNotLike => wildcard_match(expected, actual, false),
            Operator::Bool => actual.eq_ignore_ascii_case(expected),
            // Decided on the key's presence alone, in `Condition::holds`.
            Operator::Null => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    operator: Operator,
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

impl Condition {
    fn holds(&self, context: &Context) -> bool {
        let actual = context.get(&self.key);
        if self.operator == Operator::Null {
            let want_absent = self.values.iter().any(|v| v.eq_ignore_ascii_case("true"));
            return actual.is_none() == want_absent;
        }
        let Some(actual) = actual else {
            return self.if_exists || self.operator.negated();
        };
        let any = self.values.iter().any(|expected| {
            substitute(expected, context).is_some_and(|e| self.operator.matches(actual, &e))
        });
        any != self.operator.negated()
    }

    /// Whether this is `ssm:SessionDocumentAccessCheck` set to true.
    fn asks_document_check(&self) -> bool {
        self.key.eq_ignore_ascii_case(SESSION_DOCUMENT_ACCESS_CHECK)
            && self.operator == Operator::Bool
            && self.values.iter().any(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The condition key with which a StartSession statement asks that the default session
/// document be allowed explicitly too.
pub const SESSION_DOCUMENT_ACCESS_CHECK: &str = "ssm:SessionDocumentAccessCheck";

impl Policy {
    /// Parses an IAM policy document (JSON).
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// A policy allowing every action on every resource.
    pub fn administrator() -> Self {
        Self::allow_all_but(&[])
    }

    /// A policy allowing every action on every resource except `actions`.
    pub fn allow_all_but(actions: &[&str]) -> Self {
        let (patterns, negated) = match actions {
            [] => (vec!["*".to_owned()], false),
            some => (some.iter().map(|a| a.to_string()).collect(), true),
        };
        Policy {
            statements: vec![Statement {
                sid: None,
                index: 0,
                effect: Effect::Allow,
                actions: Patterns { patterns, negated },
                resources: Patterns {
                    patterns: vec!["*".into()],
                    negated: false,
                },
                conditions: Vec::new(),
            }],
        }
    }

    fn from_value(value: &Value) -> Result<Self, PolicyError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("the document must be a JSON object"))?;
        for key in object.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(invalid(format!("unknown top-level element {key:?}")));
            }
        }
        match object.get("Version").map(|v| v.as_str()) {
            None | Some(Some("2012-10-17" | "2008-10-17")) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "Version {other:?} is not 2012-10-17 or 2008-10-17"
                )))
            }
        }
        let statements = match object.get("Statement") {
            Some(Value::Array(list)) => list.iter().collect::<Vec<_>>(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => return Err(invalid("Statement must be an object or a list of objects")),
        };
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(index, s)| Statement::from_value(index, s))
            .collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    /// The statements of this policy that match `request`, in order.
    pub fn matching<'p, 'r>(
        &'p self,
        request: &Request<'r>,
    ) -> impl Iterator<Item = &'p Statement> + use<'p, 'r> {
        let request = *request;
        self.statements.iter().filter(move |s| s.matches(&request))
    }

    /// This policy's decision alone: `None` when no statement matches, else the decision and
    /// the statement that made it (the first deny, else the first allow).
    pub fn evaluate(&self, request: &Request<'_>) -> Option<(Decision, &Statement)> {
        let mut allow = None;
        for statement in self.matching(request) {
            match statement.effect {
                Effect::Deny => return Some((Decision::ExplicitDeny, statement)),
                Effect::Allow => {
                    allow.get_or_insert(statement);
                }
            }
        }
        allow.map(|s| (Decision::Allow, s))
    }
}

impl Statement {
    fn from_value(index: usize, value: &Value) -> Result<Self, PolicyError> {
        let at = |msg: String| invalid(format!("statement {index}: {msg}"));
        let object = value
            .as_object()
            .ok_or_else(|| at("must be an object".into()))?;
        for key in object.keys() {
            match key.as_str() {
                "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource"
                | "Condition" => {}
                "Principal" | "NotPrincipal" => {
                    return Err(at(format!(
                        "{key} belongs to resource policies; these are identity policies, \
                         attached to users and groups"
                    )))
                }
                other => return Err(at(format!("unknown element {other:?}"))),
            }
        }
        let sid = match object.get("Sid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(at("Sid must be a string".into())),
        };
        let effect = match object.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(at("Effect must be \"Allow\" or \"Deny\"".into())),
        };
        let actions = Patterns::from_pair(object, "Action", "NotAction").map_err(at)?;
        let resources = Patterns::from_pair(object, "Resource", "NotResource").map_err(at)?;
        let conditions = match object.get("Condition") {
            None => Vec::new(),
            Some(c) => parse_conditions(c).map_err(at)?,
        };
        Ok(Statement {
            sid,
            index,
            effect,
            actions,
            resources,
            conditions,
        })
    }

    fn matches(&self, request: &Request<'_>) -> bool {
        self.actions.matches(request.action, true, request.context)
            && self
                .resources
                .matches(request.resource, false, request.context)
            && self.conditions.iter().all(|c| c.holds(request.context))
    }

    /// Whether this statement asks for the default session document to be checked
    /// (`"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}`).
    pub fn asks_document_check(&self) -> bool {
        self.conditions.iter().any(Condition::asks_document_check)
    }
}

impl Patterns {
    fn from_pair(
        object: &serde_json::Map<String, Value>,
        positive: &str,
        negative: &str,
    ) -> Result<Self, String> {
        let (value, negated) = match (object.get(positive), object.get(negative)) {
            (Some(v), None) => (v, false),
            (None, Some(v)) => (v, true),
            (Some(_), Some(_)) => return Err(format!("has both {positive} and {negative}")),
            (None, None) => return Err(format!("needs {positive} or {negative}")),
        };
        let patterns = string_list(value)
            .ok_or_else(|| format!("{positive} must be a string or a list of strings"))?;
        if patterns.is_empty() {
            return Err(format!("{positive} must not be empty"));
        }
        Ok(Patterns { patterns, negated })
    }

    fn matches(&self, actual: &str, ignore_case: bool, context: &Context) -> bool {
        let any = self.patterns.iter().any(|pattern| {
            substitute(pattern, context).is_some_and(|p| wildcard_match(&p, actual, ignore_case))
        });
        any != self.negated
    }
}

fn parse_conditions(value: &Value) -> Result<Vec<Condition>, String> {
    let blocks = value
        .as_object()
        .ok_or("Condition must be an object of operators")?;
    let mut conditions = Vec::new();
    for (name, keys) in blocks {
        if name.starts_with("ForAnyValue:") || name.starts_with("ForAllValues:") {
            return Err(format!(
                "condition operator {name:?}: set operators are not supported \
                 (every condition key here has one value)"
            ));
        }
        let (base, if_exists) = match name.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (name.as_str(), false),
        };
        let operator = Operator::parse(base).ok_or_else(|| {
            format!(
                "condition operator {name:?} is not supported (String*, Arn*, Bool, Null, \
                 with IfExists)"
            )
        })?;
        let keys = keys
            .as_object()
            .ok_or_else(|| format!("condition {name:?} must map keys to values"))?;
        for (key, values) in keys {
            let values = match values {
                Value::Bool(b) => vec![b.to_string()],
                other => string_list(other)
                    .ok_or_else(|| format!("condition {name:?} {key:?}: values must be strings"))?,
            };
            conditions.push(Condition {
                operator,
                if_exists,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(conditions)
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// Replaces policy variables (`${aws:username}`, and the escapes `${*}`, `${?}`, `${$}`) with
/// their values; `None` when a variable the request does not have is used (the element then
/// matches nothing, as in IAM).
fn substitute(text: &str, context: &Context) -> Option<String> {
    if !text.contains("${") {
        return Some(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let name = &after[..end];
        match name {
            // Escapes for characters the patterns treat specially; kept as escaped literals.
            "*" => out.push_str("\u{0}*"),
            "?" => out.push_str("\u{0}?"),
            "$" => out.push('$'),
            key => out.push_str(context.get(key.trim())?),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Matches `text` against `pattern`, where `*` is any run of characters and `?` one character
/// (a NUL before either makes it literal, see [`substitute`]).
fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    #[derive(Clone, Copy)]
    enum Token {
        Any,
        One,
        Char(char),
    }
    let mut tokens = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '\u{0}' => Token::Char(chars.next().unwrap_or('\u{0}')),
            '*' => Token::Any,
            '?' => Token::One,
            c => Token::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let same = |a: char, b: char| {
        if ignore_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    // Greedy matching with one backtrack point for the latest `*`: linear for these patterns.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::Char(c)) if same(*c, text[t]) => {
                p += 1;
                t += 1;
            }
            Some(Token::One) => {
                p += 1;
                t += 1;
            }
            Some(Token::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|t| matches!(t, Token::Any))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> Context {
        let mut c = Context::default();
        for (k, v) in pairs {
            c.insert(k, *v);
        }
        c
    }

    fn decide(policy: &str, action: &str, resource: &str, ctx: &Context) -> Option<Decision> {
        Policy::parse(policy)
            .unwrap()
            .evaluate(&Request {
                action,
                resource,
                context: ctx,
            })
            .map(|(d, _)| d)
    }

    const INSTANCE: &str = "arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0aa";

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard_match("ssm:Start*", "ssm:StartSession", false));
        assert!(wildcard_match("ssm:*Session", "ssm:StartSession", false));
        assert!(wildcard_match("a*b*c", "axxbyyc", false));
        assert!(!wildcard_match("a*b*c", "axxbyy", false));
        assert!(wildcard_match("mi-0?a", "mi-0aa", false));
        assert!(!wildcard_match("mi-0?a", "mi-0a", false));
        assert!(wildcard_match("SSM:startsession", "ssm:StartSession", true));
        assert!(!wildcard_match(
            "SSM:startsession",
            "ssm:StartSession",
            false
        ));
        assert!(wildcard_match("*", "", false));
        assert!(wildcard_match("\u{0}*", "*", false));
        assert!(!wildcard_match("\u{0}*", "x", false));
    }

    #[test]
    fn actions_ignore_case_and_resources_do_not() {
        let p = r#"{"Statement":{"Effect":"Allow","Action":"SSM:startsession","Resource":"arn:aws:ssm:*:*:managed-instance/MI-*"}}"#;
        let ctx = Context::default();
        assert_eq!(decide(p, "ssm:StartSession", INSTANCE, &ctx), None);
        let p = r#"{"Statement":{"Effect":"Allow","Action":"SSM:startsession","Resource":"arn:aws:ssm:*:*:managed-instance/mi-*"}}"#;
        assert_eq!(
            decide(p, "ssm:StartSession", INSTANCE, &ctx),
            Some(Decision::Allow)
        );
    }

    #[test]
    fn deny_wins_within_a_policy() {
        let p = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"ssm:*","Resource":"*"},
            {"Sid":"NoProd","Effect":"Deny","Action":"ssm:StartSession","Resource":"*",
             "Condition":{"StringEquals":{"ssm:resourceTag/env":"prod"}}}]}"#;
        let prod = context(&[("ssm:resourceTag/env", "prod")]);
        let dev = context(&[("ssm:resourceTag/env", "dev")]);
        let policy = Policy::parse(p).unwrap();
        let request = Request {
            action: "ssm:StartSession",
            resource: INSTANCE,
            context: &prod,
        };
        let (decision, statement) = policy.evaluate(&request).unwrap();
        assert_eq!(decision, Decision::ExplicitDeny);
        assert_eq!(statement.sid.as_deref(), Some("NoProd"));
        assert_eq!(statement.index, 1);
        assert_eq!(
            decide(p, "ssm:StartSession", INSTANCE, &dev),
            Some(Decision::Allow)
        );
    }

    #[test]
    fn not_action_and_not_resource_invert() {
        let p = r#"{"Statement":{"Effect":"Allow","NotAction":"ssm:SendCommand","NotResource":"arn:aws:ssm:*:*:document/Secret*"}}"#;
        let ctx = Context::default();
        assert_eq!(
            decide(p, "ssm:StartSession", INSTANCE, &ctx),
            Some(Decision::Allow)
        );
        assert_eq!(decide(p, "ssm:SendCommand", INSTANCE, &ctx), None);
        assert_eq!(
            decide(
                p,
                "ssm:StartSession",
                "arn:aws:ssm:us-east-1:0:document/SecretDoc",
                &ctx
            ),
            None
        );
    }

    #[test]
    fn conditions_follow_iam_on_missing_keys() {
        let ctx = Context::default();
        let with = |cond: &str| {
            format!(
                r#"{{"Statement":{{"Effect":"Allow","Action":"*","Resource":"*","Condition":{cond}}}}}"#
            )
        };
        // A positive operator needs the key; a negated one holds without it; IfExists holds.
        assert_eq!(
            decide(&with(r#"{"StringEquals":{"k":"v"}}"#), "a:b", "*", &ctx),
            None
        );
        assert_eq!(
            decide(&with(r#"{"StringNotEquals":{"k":"v"}}"#), "a:b", "*", &ctx),
            Some(Decision::Allow)
        );
        assert_eq!(
            decide(
                &with(r#"{"StringEqualsIfExists":{"k":"v"}}"#),
                "a:b",
                "*",
                &ctx
            ),
            Some(Decision::Allow)
        );
        assert_eq!(
            decide(&with(r#"{"Null":{"k":"true"}}"#), "a:b", "*", &ctx),
            Some(Decision::Allow)
        );
        let has = context(&[("K", "v2")]);
        assert_eq!(
            decide(
                &with(r#"{"StringLike":{"k":["v1","v?"]}}"#),
                "a:b",
                "*",
                &has
            ),
            Some(Decision::Allow)
        );
        assert_eq!(
            decide(&with(r#"{"StringNotLike":{"k":"v*"}}"#), "a:b", "*", &has),
            None
        );
        assert_eq!(
            decide(&with(r#"{"Null":{"k":"false"}}"#), "a:b", "*", &has),
            Some(Decision::Allow)
        );
        // Every condition of a statement must hold.
        assert_eq!(
            decide(
                &with(r#"{"StringEquals":{"k":"v2"},"StringLike":{"other":"*"}}"#),
                "a:b",
                "*",
                &has
            ),
            None
        );
    }

    #[test]
    fn policy_variables_are_substituted() {
        let p = r#"{"Statement":{"Effect":"Allow","Action":"ssm:TerminateSession",
            "Resource":"arn:aws:ssm:*:*:session/${aws:username}-*"}}"#;
        let alice = context(&[("aws:username", "alice")]);
        let session = |id: &str| format!("arn:aws:ssm:us-east-1:0:session/{id}");
        assert_eq!(
            decide(p, "ssm:TerminateSession", &session("alice-0abc"), &alice),
            Some(Decision::Allow)
        );
        assert_eq!(
            decide(p, "ssm:TerminateSession", &session("bob-0abc"), &alice),
            None
        );
        // Without the variable's key the element matches nothing.
        assert_eq!(
            decide(
                p,
                "ssm:TerminateSession",
                &session("alice-0abc"),
                &Context::default()
            ),
            None
        );
        let literal = r#"{"Statement":{"Effect":"Allow","Action":"a:b","Resource":"x${*}"}}"#;
        let ctx = Context::default();
        assert_eq!(decide(literal, "a:b", "x*", &ctx), Some(Decision::Allow));
        assert_eq!(decide(literal, "a:b", "xy", &ctx), None);
    }

    #[test]
    fn session_document_access_check_is_recognised() {
        let p = Policy::parse(
            r#"{"Statement":{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*",
                "Condition":{"BoolIfExists":{"ssm:SessionDocumentAccessCheck":"true"}}}}"#,
        )
        .unwrap();
        let ctx = Context::default();
        let request = Request {
            action: "ssm:StartSession",
            resource: INSTANCE,
            context: &ctx,
        };
        let (decision, statement) = p.evaluate(&request).unwrap();
        assert_eq!(decision, Decision::Allow);
        assert!(statement.asks_document_check());
        let bool_json = Policy::parse(
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*",
                "Condition":{"Bool":{"ssm:SessionDocumentAccessCheck":true}}}}"#,
        )
        .unwrap();
        assert!(bool_json.statements[0].asks_document_check());
    }

    #[test]
    fn malformed_documents_are_refused_with_reasons() {
        let cases = [
            ("[]", "JSON object"),
            (
                r#"{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}"#,
                "Effect",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Resource":"*"}]}"#,
                "needs Action",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Action":"*","NotAction":"x","Resource":"*"}]}"#,
                "both",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Principal":"*"}]}"#,
                "identity policies",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"NumericLessThan":{"a":"1"}}}]}"#,
                "not supported",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"a":"1"}}}]}"#,
                "set operators",
            ),
            (r#"{"Version":"2020-01-01","Statement":[]}"#, "Version"),
            (
                r#"{"Statement":[{"Effect":"Allow","Action":[],"Resource":"*"}]}"#,
                "empty",
            ),
        ];
        for (doc, needle) in cases {
            let err = Policy::parse(doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn administrator_allows_everything() {
        let ctx = Context::default();
        let request = Request {
            action: "kms:Decrypt",
            resource: "arn:aws:kms:us-east-1:0:key/x",
            context: &ctx,
        };
        assert!(matches!(
            Policy::administrator().evaluate(&request),
            Some((Decision::Allow, _))
        ));
    }
}
