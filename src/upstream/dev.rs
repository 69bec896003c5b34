//! The embedded dev secret store: an in-memory stand-in for AWS Secrets Manager.
//!
//! **NOT FOR PRODUCTION.** Secrets live only in this process's memory and are
//! lost on restart; nothing is encrypted (a `KmsKeyId` is only remembered) and
//! nothing here authenticates or authorizes anyone. It exists so that the
//! quickstart runs keygate without an AWS account.
//!
//! keygate passes [`DevStore::call`] the operation named by `X-Amz-Target` and
//! the parsed JSON request, and returns the result verbatim as the response
//! body, so every result has the exact shape of the AWS JSON API (member
//! names, dates as epoch seconds, `SecretBinary` as base64) that SDKs parse.
//! Errors are [`ServiceError`]s with AWS's `__type` names and HTTP status 400.
//!
//! Covered: GetSecretValue, BatchGetSecretValue, DescribeSecret, ListSecrets,
//! ListSecretVersionIds, CreateSecret, PutSecretValue, UpdateSecret,
//! DeleteSecret, RestoreSecret, TagResource, UntagResource,
//! Get/Put/DeleteResourcePolicy and GetRandomPassword. RotateSecret fails with
//! `InvalidRequestException`: rotation runs a Lambda the dev store does not
//! have, and faking one would overwrite structured secrets with a bare
//! password. Every other operation fails the same way.
//!
//! Where this store knowingly differs from AWS:
//! - ListSecrets sorts by name (AWS sorts by creation date), ascending unless
//!   `SortOrder` is `desc`; a `NextToken` is only meaningful with the same
//!   `SortOrder` and `Filters` it came from.
//! - Within one filter, a secret matches when it matches any plain value (or
//!   there is none) and no `!`-negated value; filters combine with AND.
//! - Resource policies are only checked to be JSON objects, never enforced.
//! - Versions without staging labels are kept (readable by `VersionId`, listed
//!   with `IncludeDeprecated`) until a secret has more than 100 versions.
//! - A secret scheduled for deletion is purged by the first call made after
//!   its recovery window ends.
//! - Seeds given to [`DevStore::new`] are not validated; a repeated name keeps
//!   the last value.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::ServiceError;

/// The account in every ARN: the dev store has no accounts, so it uses the
/// placeholder that AWS's own documentation uses.
const ACCOUNT_ID: &str = "123456789012";
const AWSCURRENT: &str = "AWSCURRENT";
const AWSPREVIOUS: &str = "AWSPREVIOUS";
/// AWS's limit on `SecretString` and on decoded `SecretBinary`, in bytes.
const MAX_SECRET_BYTES: usize = 65_536;
/// Beyond this many versions a secret loses its oldest unlabelled ones, so a
/// loop of PutSecretValue calls cannot grow memory without bound.
const MAX_VERSIONS: usize = 100;
const DEFAULT_RECOVERY_DAYS: usize = 30;
const SECONDS_PER_DAY: u64 = 86_400;
/// The punctuation GetRandomPassword draws from, as AWS documents it.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// What AWS allows in a secret name besides ASCII letters and digits.
const NAME_SYMBOLS: &str = "/_+=.@-";

type Reply = Result<Value, ServiceError>;

/// Every operation: it reads the request and may change the store.
type Handler = fn(&mut State, Params, SystemTime) -> Reply;

/// An in-memory AWS Secrets Manager for development; see the module docs.
pub struct DevStore {
    state: Mutex<State>,
}

impl DevStore {
    /// `region` goes into ARNs; `seeds` are (name, secret string) pairs created at `now`.
    pub fn new(region: &str, seeds: &[(String, String)], now: SystemTime) -> DevStore {
        let mut secrets = BTreeMap::new();
        for (name, value) in seeds {
            let mut secret = Secret::new(region, name, now);
            let value = SecretValue::Text(value.clone());
            secret.add_version(new_version_id(), value, &[AWSCURRENT], now);
            secrets.insert(name.clone(), secret);
        }
        let state = State {
            region: region.to_owned(),
            secrets,
        };
        DevStore {
            state: Mutex::new(state),
        }
    }

    /// `operation` is the X-Amz-Target suffix, e.g. "GetSecretValue"; `body` the parsed JSON request.
    pub fn call(&self, operation: &str, body: &Value, now: SystemTime) -> Reply {
        let handler = handler(operation).ok_or_else(|| {
            invalid_request(format!(
                "operation {operation} is not supported by the keygate dev store"
            ))
        })?;
        // Some SDKs send no body at all for operations without required members.
        let empty = Map::new();
        let params = match body {
            Value::Null => Params(&empty),
            other => Params::new(other, "the request body")?,
        };
        let mut state = self.lock();
        state.purge_expired(now);
        handler(&mut state, params, now)
    }

    /// Every change to the state is made in one step after all checks pass,
    /// so a state left behind by a panicking thread is still consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shows only how many secrets there are: names are harmless but values are
/// secrets, and a derived `Debug` would print them.
impl fmt::Debug for DevStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevStore")
            .field("secrets", &self.lock().secrets.len())
            .finish_non_exhaustive()
    }
}

fn handler(operation: &str) -> Option<Handler> {
    let handler: Handler = match operation {
        "GetSecretValue" => State::get_secret_value,
        "BatchGetSecretValue" => State::batch_get_secret_value,
        "DescribeSecret" => State::describe_secret,
        "ListSecrets" => State::list_secrets,
        "ListSecretVersionIds" => State::list_secret_version_ids,
        "CreateSecret" => State::create_secret,
        "PutSecretValue" => State::put_secret_value,
        "UpdateSecret" => State::update_secret,
        "DeleteSecret" => State::delete_secret,
        "RestoreSecret" => State::restore_secret,
        "TagResource" => State::tag_resource,
        "UntagResource" => State::untag_resource,
        "GetResourcePolicy" => State::get_resource_policy,
        "PutResourcePolicy" => State::put_resource_policy,
        "DeleteResourcePolicy" => State::delete_resource_policy,
        "RotateSecret" => State::rotate_secret,
        "GetRandomPassword" => |_, params, _| random_password(params),
        _ => return None,
    };
    Some(handler)
}

// ---------------------------------------------------------------- errors

fn invalid_parameter(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "InvalidParameterException", message)
}

fn invalid_request(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "InvalidRequestException", message)
}

fn resource_exists(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "ResourceExistsException", message)
}

fn not_found(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "ResourceNotFoundException", message)
}

fn secret_not_found() -> ServiceError {
    not_found("Secrets Manager can't find the specified secret.")
}

fn marked_for_deletion() -> ServiceError {
    invalid_request(
        "You can't perform this operation on the secret because it was marked for deletion.",
    )
}

fn invalid_next_token() -> ServiceError {
    ServiceError::new(400, "InvalidNextTokenException", "The NextToken value is invalid.")
}

// ---------------------------------------------------------------- request parsing

/// Typed access to the members of a JSON request object. Absent and `null`
/// members read as `None`; a member of the wrong type or size is an
/// `InvalidParameterException` naming it. Messages never quote a value,
/// because the value may be a secret.
#[derive(Clone, Copy)]
struct Params<'a>(&'a Map<String, Value>);

impl<'a> Params<'a> {
    fn new(value: &'a Value, what: &str) -> Result<Self, ServiceError> {
        match value {
            Value::Object(map) => Ok(Params(map)),
            _ => Err(invalid_parameter(format!("{what} must be a JSON object"))),
        }
    }

    fn get(self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    fn string(self, name: &str, chars: RangeInclusive<usize>) -> Result<Option<&'a str>, ServiceError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let text = value
            .as_str()
            .ok_or_else(|| invalid_parameter(format!("{name} must be a string")))?;
        if chars.contains(&text.chars().count()) {
            Ok(Some(text))
        } else {
            Err(invalid_parameter(format!(
                "{name} must be {} to {} characters long",
                chars.start(),
                chars.end()
            )))
        }
    }

    fn boolean(self, name: &str) -> Result<Option<bool>, ServiceError> {
        self.get(name)
            .map(|value| {
                value
                    .as_bool()
                    .ok_or_else(|| invalid_parameter(format!("{name} must be a boolean")))
            })
            .transpose()
    }

    fn integer(self, name: &str, range: RangeInclusive<usize>) -> Result<Option<usize>, ServiceError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                invalid_parameter(format!(
                    "{name} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ))
            })
    }

    fn array(self, name: &str, items: RangeInclusive<usize>) -> Result<Option<&'a [Value]>, ServiceError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let array = value
            .as_array()
            .ok_or_else(|| invalid_parameter(format!("{name} must be a list")))?;
        if items.contains(&array.len()) {
            Ok(Some(array))
        } else {
            Err(invalid_parameter(format!(
                "{name} must have {} to {} items",
                items.start(),
                items.end()
            )))
        }
    }

    fn strings(
        self,
        name: &str,
        items: RangeInclusive<usize>,
        chars: RangeInclusive<usize>,
    ) -> Result<Option<Vec<&'a str>>, ServiceError> {
        let Some(array) = self.array(name, items)? else {
            return Ok(None);
        };
        let item = |value: &'a Value| {
            value
                .as_str()
                .filter(|text| chars.contains(&text.chars().count()))
                .ok_or_else(|| {
                    invalid_parameter(format!(
                        "each item of {name} must be a string of {} to {} characters",
                        chars.start(),
                        chars.end()
                    ))
                })
        };
        array.iter().map(item).collect::<Result<_, _>>().map(Some)
    }

    fn objects(self, name: &str, items: RangeInclusive<usize>) -> Result<Option<Vec<Params<'a>>>, ServiceError> {
        let Some(array) = self.array(name, items)? else {
            return Ok(None);
        };
        let what = format!("each item of {name}");
        array
            .iter()
            .map(|value| Params::new(value, &what))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

fn required<T>(name: &str, value: Option<T>) -> Result<T, ServiceError> {
    value.ok_or_else(|| invalid_parameter(format!("missing required parameter {name}")))
}

fn secret_id(params: Params<'_>) -> Result<&str, ServiceError> {
    required("SecretId", params.string("SecretId", 1..=2048)?)
}

/// SDKs fill `ClientRequestToken` in themselves, so it is usually present.
fn client_token(params: Params<'_>) -> Result<Option<&str>, ServiceError> {
    params.string("ClientRequestToken", 32..=64)
}

fn version_stages(params: Params<'_>) -> Result<Option<Vec<&str>>, ServiceError> {
    params.strings("VersionStages", 1..=20, 1..=256)
}

fn max_results(params: Params, most: usize) -> Result<usize, ServiceError> {
    Ok(params.integer("MaxResults", 1..=most)?.unwrap_or(most))
}

fn next_token(params: Params<'_>) -> Result<Option<&str>, ServiceError> {
    params.string("NextToken", 1..=4096)
}

/// `SecretString` or `SecretBinary` (base64 in JSON), never both.
fn secret_value(params: Params) -> Result<Option<SecretValue>, ServiceError> {
    let text = params.string("SecretString", 0..=usize::MAX)?;
    let binary = params.string("SecretBinary", 0..=usize::MAX)?;
    let value = match (text, binary) {
        (Some(_), Some(_)) => {
            return Err(invalid_parameter(
                "You can't specify both SecretString and SecretBinary.",
            ))
        }
        (Some(text), None) => SecretValue::Text(text.to_owned()),
        (None, Some(encoded)) => SecretValue::Binary(
            STANDARD
                .decode(encoded)
                .map_err(|_| invalid_parameter("SecretBinary must be base64-encoded"))?,
        ),
        (None, None) => return Ok(None),
    };
    if value.len() > MAX_SECRET_BYTES {
        return Err(invalid_parameter(format!(
            "the secret value must be at most {MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(Some(value))
}

fn tags(params: Params) -> Result<Option<Vec<(String, String)>>, ServiceError> {
    let Some(items) = params.objects("Tags", 0..=50)? else {
        return Ok(None);
    };
    let tag = |tag: Params| {
        let key = required("Key", tag.string("Key", 1..=128)?)?;
        let value = tag.string("Value", 0..=256)?.unwrap_or_default();
        Ok((key.to_owned(), value.to_owned()))
    };
    items.into_iter().map(tag).collect::<Result<_, _>>().map(Some)
}

fn filters(params: Params) -> Result<Vec<Filter>, ServiceError> {
    let items = params.objects("Filters", 0..=10)?.unwrap_or_default();
    items.into_iter().map(Filter::parse).collect()
}

fn validate_name(name: &str) -> Result<(), ServiceError> {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || NAME_SYMBOLS.contains(c))
    {
        Ok(())
    } else {
        Err(invalid_parameter(format!(
            "Invalid name. Must be a valid name containing alphanumeric characters, or any of the following: {NAME_SYMBOLS}"
        )))
    }
}

// ---------------------------------------------------------------- response helpers

/// A JSON object without the members that are `None`, as AWS leaves unset
/// members out.
fn object<const N: usize>(members: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?)))
            .collect(),
    )
}

/// AWS JSON dates are epoch seconds as a number, to the millisecond.
fn epoch(time: SystemTime) -> Value {
    let millis = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    json!(millis as f64 / 1000.0)
}

/// AWS records `LastAccessedDate` to the day, not the instant.
fn day_of(time: SystemTime) -> SystemTime {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs - secs % SECONDS_PER_DAY)
}

fn new_version_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Returns one page of `items` (already in output order, each with its sort
/// key) and the token for the next page. A token holds the last key returned,
/// not a position, so secrets created or deleted between pages do not shift
/// the pages after them.
fn paginate<T>(
    items: Vec<(String, T)>,
    descending: bool,
    max: usize,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ServiceError> {
    let after = token.map(token_key).transpose()?;
    let is_past = |key: &str| match &after {
        None => true,
        Some(after) if descending => key < after.as_str(),
        Some(after) => key > after.as_str(),
    };
    let mut rest: Vec<(String, T)> = items.into_iter().filter(|(key, _)| is_past(key)).collect();
    let more = rest.len() > max;
    rest.truncate(max);
    let next = if more {
        rest.last().map(|(key, _)| URL_SAFE_NO_PAD.encode(key))
    } else {
        None
    };
    Ok((rest.into_iter().map(|(_, item)| item).collect(), next))
}

fn token_key(token: &str) -> Result<String, ServiceError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid_next_token)
}

// ---------------------------------------------------------------- the store's data

#[derive(PartialEq, Eq)]
enum SecretValue {
    Text(String),
    Binary(Vec<u8>),
}

impl SecretValue {
    fn len(&self) -> usize {
        match self {
            SecretValue::Text(text) => text.len(),
            SecretValue::Binary(bytes) => bytes.len(),
        }
    }
}

struct Version {
    id: String,
    value: SecretValue,
    stages: Vec<String>,
    created: SystemTime,
    last_accessed: Option<SystemTime>,
    /// Creation order, for paging: several versions may share a `created`.
    seq: u64,
}

impl Version {
    fn summary(&self) -> Value {
        object([
            ("VersionId", Some(json!(self.id))),
            ("VersionStages", Some(json!(self.stages))),
            ("LastAccessedDate", self.last_accessed.map(epoch)),
            ("CreatedDate", Some(epoch(self.created))),
        ])
    }
}

struct Deletion {
    /// When DeleteSecret was called: DescribeSecret's `DeletedDate`.
    at: SystemTime,
    /// When the recovery window ends: DeleteSecret's `DeletionDate`.
    purge_at: SystemTime,
}

struct Secret {
    arn: String,
    name: String,
    description: Option<String>,
    kms_key_id: Option<String>,
    tags: Vec<(String, String)>,
    policy: Option<String>,
    created: SystemTime,
    last_changed: SystemTime,
    last_accessed: Option<SystemTime>,
    deletion: Option<Deletion>,
    /// Oldest first.
    versions: Vec<Version>,
    next_seq: u64,
}

impl Secret {
    fn new(region: &str, name: &str, now: SystemTime) -> Secret {
        // AWS ends every ARN with a random suffix so that a secret deleted and
        // created again under the same name gets a different ARN.
        let suffix: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(6)
            .map(char::from)
            .collect();
        Secret {
            arn: format!("arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{name}-{suffix}"),
            name: name.to_owned(),
            description: None,
            kms_key_id: None,
            tags: Vec::new(),
            policy: None,
            created: now,
            last_changed: now,
            last_accessed: None,
            deletion: None,
            versions: Vec::new(),
            next_seq: 0,
        }
    }

    /// AWS also accepts an ARN without the random suffix.
    fn has_partial_arn(&self, id: &str) -> bool {
        self.arn
            .strip_prefix(id)
            .is_some_and(|rest| rest.len() == 7 && rest.starts_with('-'))
    }

    fn ids(&self) -> Value {
        json!({ "ARN": self.arn, "Name": self.name })
    }

    /// DescribeSecret's result, and a ListSecrets entry, which names the
    /// version map differently.
    fn summary(&self, stages_member: &str) -> Value {
        let stages: Map<String, Value> = self
            .versions
            .iter()
            .filter(|version| !version.stages.is_empty())
            .map(|version| (version.id.clone(), json!(version.stages)))
            .collect();
        let tags: Vec<Value> = self
            .tags
            .iter()
            .map(|(key, value)| json!({ "Key": key, "Value": value }))
            .collect();
        object([
            ("ARN", Some(json!(self.arn))),
            ("Name", Some(json!(self.name))),
            ("Description", self.description.as_deref().map(Value::from)),
            ("KmsKeyId", self.kms_key_id.as_deref().map(Value::from)),
            ("RotationEnabled", Some(json!(false))),
            ("LastChangedDate", Some(epoch(self.last_changed))),
            ("LastAccessedDate", self.last_accessed.map(epoch)),
            ("DeletedDate", self.deletion.as_ref().map(|d| epoch(d.at))),
            ("Tags", Some(Value::Array(tags))),
            (stages_member, Some(Value::Object(stages))),
            ("CreatedDate", Some(epoch(self.created))),
        ])
    }

    /// Picks a version the way GetSecretValue does: by id, by staging label,
    /// or both (which must agree); AWSCURRENT when neither is given.
    fn select_version(&self, id: Option<&str>, stage: Option<&str>) -> Result<usize, ServiceError> {
        let by_id = |id: &str| {
            self.versions
                .iter()
                .position(|version| version.id == id)
                .ok_or_else(|| {
                    not_found(format!(
                        "Secrets Manager can't find the specified secret value for VersionId: {id}"
                    ))
                })
        };
        match (id, stage) {
            (Some(id), None) => by_id(id),
            (Some(id), Some(stage)) => {
                let index = by_id(id)?;
                if self.versions[index].has_stage(stage) {
                    Ok(index)
                } else {
                    Err(not_found(
                        "You provided a VersionStage that is not associated to the provided VersionId.",
                    ))
                }
            }
            (None, stage) => {
                let stage = stage.unwrap_or(AWSCURRENT);
                self.stage_holder(stage).ok_or_else(|| {
                    not_found(format!(
                        "Secrets Manager can't find the specified secret value for staging label: {stage}"
                    ))
                })
            }
        }
    }

    fn stage_holder(&self, stage: &str) -> Option<usize> {
        self.versions.iter().position(|version| version.has_stage(stage))
    }

    /// GetSecretValue's result; reading counts as an access.
    fn read_value(&mut self, id: Option<&str>, stage: Option<&str>, now: SystemTime) -> Reply {
        let index = self.select_version(id, stage)?;
        self.last_accessed = Some(day_of(now));
        let version = &mut self.versions[index];
        version.last_accessed = Some(day_of(now));
        let (text, binary) = match &version.value {
            SecretValue::Text(text) => (Some(json!(text)), None),
            SecretValue::Binary(bytes) => (None, Some(json!(STANDARD.encode(bytes)))),
        };
        Ok(object([
            ("ARN", Some(json!(self.arn))),
            ("Name", Some(json!(self.name))),
            ("VersionId", Some(json!(version.id))),
            ("SecretString", text),
            ("SecretBinary", binary),
            ("VersionStages", Some(json!(version.stages))),
            ("CreatedDate", Some(epoch(version.created))),
        ]))
    }

    /// Stores `value` as a new version whose id is `token` (or a fresh UUID),
    /// labelled `stages` (default AWSCURRENT). A token that names an existing
    /// version with the same value changes nothing, so SDK retries are
    /// idempotent; with a different value it is an error, as versions are
    /// immutable. Returns the version id.
    fn put_value(
        &mut self,
        token: Option<&str>,
        value: SecretValue,
        stages: Option<&[&str]>,
        now: SystemTime,
    ) -> Result<String, ServiceError> {
        let id = token.map_or_else(new_version_id, str::to_owned);
        if let Some(existing) = self.versions.iter().find(|version| version.id == id) {
            return if existing.value == value {
                Ok(id)
            } else {
                Err(resource_exists(
                    "You can't modify an existing version, you can only create a new version.",
                ))
            };
        }
        self.add_version(id.clone(), value, stages.unwrap_or(&[AWSCURRENT]), now);
        Ok(id)
    }

    fn add_version(&mut self, id: String, value: SecretValue, stages: &[&str], now: SystemTime) {
        self.versions.push(Version {
            id,
            value,
            stages: Vec::new(),
            created: now,
            last_accessed: None,
            seq: self.next_seq,
        });
        self.next_seq += 1;
        let newest = self.versions.len() - 1;
        for stage in stages {
            self.move_stage(stage, newest);
        }
        self.prune_versions();
        self.last_changed = now;
    }

    /// A staging label is on at most one version. Moving AWSCURRENT away from
    /// a version leaves AWSPREVIOUS on it, as AWS does.
    fn move_stage(&mut self, stage: &str, to: usize) {
        if stage == AWSCURRENT {
            if let Some(old) = self.stage_holder(AWSCURRENT).filter(|&old| old != to) {
                self.move_stage(AWSPREVIOUS, old);
            }
        }
        for version in &mut self.versions {
            version.stages.retain(|held| held != stage);
        }
        if let Some(version) = self.versions.get_mut(to) {
            version.stages.push(stage.to_owned());
        }
    }

    fn prune_versions(&mut self) {
        while self.versions.len() > MAX_VERSIONS {
            let Some(oldest) = self.versions.iter().position(|v| v.stages.is_empty()) else {
                break;
            };
            self.versions.remove(oldest);
        }
    }

    fn stages_of(&self, id: &str) -> Vec<String> {
        self.versions
            .iter()
            .find(|version| version.id == id)
            .map(|version| version.stages.clone())
            .unwrap_or_default()
    }

    /// TagResource semantics: a key already present gets the new value.
    fn merge_tags(&mut self, tags: Vec<(String, String)>) {
        for (key, value) in tags {
            match self.tags.iter_mut().find(|(held, _)| *held == key) {
                Some(tag) => tag.1 = value,
                None => self.tags.push((key, value)),
            }
        }
    }

    /// CreateSecret for a name that is taken. A retry of the call that
    /// created it (same ClientRequestToken and value) succeeds again, as AWS
    /// documents for the token.
    fn repeated_creation(&self, token: Option<&str>, value: Option<&SecretValue>) -> Reply {
        if self.deletion.is_some() {
            return Err(invalid_request(
                "You can't create this secret because a secret with this name is already scheduled for deletion.",
            ));
        }
        let retried = token.zip(value).is_some_and(|(token, value)| {
            self.versions
                .iter()
                .any(|version| version.id == token && version.value == *value)
        });
        if retried {
            Ok(object([
                ("ARN", Some(json!(self.arn))),
                ("Name", Some(json!(self.name))),
                ("VersionId", token.map(Value::from)),
            ]))
        } else {
            Err(resource_exists(format!(
                "The operation failed because the secret {} already exists.",
                self.name
            )))
        }
    }
}

impl Version {
    fn has_stage(&self, stage: &str) -> bool {
        self.stages.iter().any(|held| held == stage)
    }
}

// ---------------------------------------------------------------- ListSecrets filters

#[derive(Clone, Copy)]
enum FilterKey {
    Name,
    Description,
    TagKey,
    TagValue,
    All,
}

struct Filter {
    key: FilterKey,
    /// As given: a leading `!` negates.
    values: Vec<String>,
}

impl Filter {
    fn parse(params: Params) -> Result<Filter, ServiceError> {
        let key = match required("Key", params.string("Key", 1..=32)?)? {
            "name" => FilterKey::Name,
            "description" => FilterKey::Description,
            "tag-key" => FilterKey::TagKey,
            "tag-value" => FilterKey::TagValue,
            "all" => FilterKey::All,
            other => {
                return Err(invalid_parameter(format!(
                    "filter key {other} is not supported by the keygate dev store"
                )))
            }
        };
        let values = required("Values", params.strings("Values", 1..=10, 0..=512)?)?;
        Ok(Filter {
            key,
            values: values.into_iter().map(str::to_owned).collect(),
        })
    }

    fn matches(&self, secret: &Secret) -> bool {
        let mut plain = self.values.iter().filter(|v| !v.starts_with('!')).peekable();
        let plain_ok = plain.peek().is_none() || plain.any(|v| self.key.matches(secret, v));
        let negated_hit = self
            .values
            .iter()
            .filter_map(|v| v.strip_prefix('!'))
            .any(|v| self.key.matches(secret, v));
        plain_ok && !negated_hit
    }
}

impl FilterKey {
    /// Prefix matches; `description` and `all` ignore case, as AWS documents.
    fn matches(self, secret: &Secret, value: &str) -> bool {
        match self {
            FilterKey::Name => secret.name.starts_with(value),
            FilterKey::Description => secret
                .description
                .as_deref()
                .is_some_and(|description| starts_with_ignoring_case(description, value)),
            FilterKey::TagKey => secret.tags.iter().any(|(key, _)| key.starts_with(value)),
            FilterKey::TagValue => secret.tags.iter().any(|(_, tag)| tag.starts_with(value)),
            FilterKey::All => {
                // AWS splits the value into words and looks for each one among
                // the words of the name, the description and the tags.
                let attributes: Vec<&str> = std::iter::once(secret.name.as_str())
                    .chain(secret.description.as_deref())
                    .chain(secret.tags.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
                    .flat_map(words)
                    .collect();
                words(value).all(|word| {
                    attributes
                        .iter()
                        .any(|attribute| starts_with_ignoring_case(attribute, word))
                })
            }
        }
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
}

fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.to_lowercase().starts_with(&prefix.to_lowercase())
}

// ---------------------------------------------------------------- operations

struct State {
    region: String,
    /// Keyed by name, so listing walks them in name order.
    secrets: BTreeMap<String, Secret>,
}

impl State {
    fn purge_expired(&mut self, now: SystemTime) {
        self.secrets
            .retain(|_, secret| !matches!(&secret.deletion, Some(d) if d.purge_at <= now));
    }

    /// Finds a secret by name, full ARN or ARN without the random suffix,
    /// whether or not it is scheduled for deletion.
    fn lookup(&mut self, id: &str) -> Result<&mut Secret, ServiceError> {
        // Names cannot contain ':', so anything starting "arn:" is an ARN.
        let name = if id.starts_with("arn:") {
            let mut secrets = self.secrets.values();
            let found = secrets
                .clone()
                .find(|secret| secret.arn == id)
                .or_else(|| secrets.find(|secret| secret.has_partial_arn(id)));
            found.ok_or_else(secret_not_found)?.name.clone()
        } else {
            id.to_owned()
        };
        self.secrets.get_mut(&name).ok_or_else(secret_not_found)
    }

    /// Like `lookup`, for operations AWS refuses on a secret scheduled for deletion.
    fn live(&mut self, id: &str) -> Result<&mut Secret, ServiceError> {
        let secret = self.lookup(id)?;
        if secret.deletion.is_some() {
            Err(marked_for_deletion())
        } else {
            Ok(secret)
        }
    }

    fn matching<'s>(
        &'s self,
        filters: &'s [Filter],
        include_deleted: bool,
    ) -> impl Iterator<Item = &'s Secret> + 's {
        self.secrets.values().filter(move |secret| {
            (include_deleted || secret.deletion.is_none())
                && filters.iter().all(|filter| filter.matches(secret))
        })
    }

    fn get_secret_value(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let version_id = params.string("VersionId", 32..=64)?;
        let stage = params.string("VersionStage", 1..=256)?;
        self.live(id)?.read_value(version_id, stage, now)
    }

    fn batch_get_secret_value(&mut self, params: Params, now: SystemTime) -> Reply {
        let ids = params.strings("SecretIdList", 1..=20, 1..=2048)?;
        let (ids, next): (Vec<String>, _) = match (ids, params.get("Filters").is_some()) {
            (Some(ids), false) => {
                if params.get("MaxResults").is_some() || params.get("NextToken").is_some() {
                    return Err(invalid_parameter(
                        "MaxResults and NextToken can only be used with Filters.",
                    ));
                }
                (ids.into_iter().map(str::to_owned).collect(), None)
            }
            (None, true) => {
                let filters = filters(params)?;
                let max = max_results(params, 20)?;
                let names = self
                    .matching(&filters, false)
                    .map(|secret| (secret.name.clone(), secret.name.clone()))
                    .collect();
                paginate(names, false, max, next_token(params)?)?
            }
            _ => {
                return Err(invalid_parameter(
                    "Specify either SecretIdList or Filters, but not both.",
                ))
            }
        };
        let mut values = Vec::new();
        let mut errors = Vec::new();
        for id in ids {
            match self
                .live(&id)
                .and_then(|secret| secret.read_value(None, None, now))
            {
                Ok(value) => values.push(value),
                Err(error) => errors.push(json!({
                    "SecretId": id,
                    "ErrorCode": error.error_type,
                    "Message": error.message,
                })),
            }
        }
        Ok(object([
            ("SecretValues", Some(Value::Array(values))),
            ("Errors", Some(Value::Array(errors))),
            ("NextToken", next.map(Value::from)),
        ]))
    }

    fn describe_secret(&mut self, params: Params, _now: SystemTime) -> Reply {
        Ok(self.lookup(secret_id(params)?)?.summary("VersionIdsToStages"))
    }

    fn list_secrets(&mut self, params: Params, _now: SystemTime) -> Reply {
        let include_deleted = params.boolean("IncludePlannedDeletion")?.unwrap_or(false);
        let max = max_results(params, 100)?;
        let token = next_token(params)?;
        let descending = match params.string("SortOrder", 0..=8)? {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => return Err(invalid_parameter("SortOrder must be asc or desc")),
        };
        let filters = filters(params)?;
        let mut secrets: Vec<(String, &Secret)> = self
            .matching(&filters, include_deleted)
            .map(|secret| (secret.name.clone(), secret))
            .collect();
        if descending {
            secrets.reverse();
        }
        let (page, next) = paginate(secrets, descending, max, token)?;
        let list = page
            .into_iter()
            .map(|secret| secret.summary("SecretVersionsToStages"))
            .collect();
        Ok(object([
            ("SecretList", Some(Value::Array(list))),
            ("NextToken", next.map(Value::from)),
        ]))
    }

    fn list_secret_version_ids(&mut self, params: Params, _now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let max = max_results(params, 100)?;
        let token = next_token(params)?;
        let include_deprecated = params.boolean("IncludeDeprecated")?.unwrap_or(false);
        let secret = self.lookup(id)?;
        let versions = secret
            .versions
            .iter()
            .filter(|version| include_deprecated || !version.stages.is_empty())
            // Zero-padded so that the keys sort as the numbers do.
            .map(|version| (format!("{:020}", version.seq), version))
            .collect();
        let (page, next) = paginate(versions, false, max, token)?;
        Ok(object([
            ("Versions", Some(page.into_iter().map(Version::summary).collect())),
            ("NextToken", next.map(Value::from)),
            ("ARN", Some(json!(secret.arn))),
            ("Name", Some(json!(secret.name))),
        ]))
    }

    fn create_secret(&mut self, params: Params, now: SystemTime) -> Reply {
        let name = required("Name", params.string("Name", 1..=512)?)?;
        validate_name(name)?;
        let token = client_token(params)?;
        let description = params.string("Description", 0..=2048)?;
        let kms_key_id = params.string("KmsKeyId", 0..=2048)?;
        let value = secret_value(params)?;
        let tags = tags(params)?.unwrap_or_default();
        if let Some(existing) = self.secrets.get(name) {
            return existing.repeated_creation(token, value.as_ref());
        }
        let mut secret = Secret::new(&self.region, name, now);
        secret.description = description.map(str::to_owned);
        secret.kms_key_id = kms_key_id.map(str::to_owned);
        secret.merge_tags(tags);
        let version_id = value
            .map(|value| secret.put_value(token, value, None, now))
            .transpose()?;
        let reply = object([
            ("ARN", Some(json!(secret.arn))),
            ("Name", Some(json!(secret.name))),
            ("VersionId", version_id.map(Value::from)),
        ]);
        self.secrets.insert(name.to_owned(), secret);
        Ok(reply)
    }

    fn put_secret_value(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let token = client_token(params)?;
        let value = secret_value(params)?.ok_or_else(|| {
            invalid_parameter("You must provide either SecretString or SecretBinary.")
        })?;
        let stages = version_stages(params)?;
        let secret = self.live(id)?;
        let version_id = secret.put_value(token, value, stages.as_deref(), now)?;
        Ok(json!({
            "ARN": secret.arn,
            "Name": secret.name,
            "VersionStages": secret.stages_of(&version_id),
            "VersionId": version_id,
        }))
    }

    fn update_secret(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let token = client_token(params)?;
        let description = params.string("Description", 0..=2048)?;
        let kms_key_id = params.string("KmsKeyId", 0..=2048)?;
        let value = secret_value(params)?;
        let secret = self.live(id)?;
        // The value goes first: it is the only part that can still fail, and
        // a failed call must change nothing.
        let version_id = value
            .map(|value| secret.put_value(token, value, None, now))
            .transpose()?;
        if let Some(description) = description {
            secret.description = Some(description.to_owned());
        }
        if let Some(kms_key_id) = kms_key_id {
            secret.kms_key_id = Some(kms_key_id.to_owned());
        }
        secret.last_changed = now;
        Ok(object([
            ("ARN", Some(json!(secret.arn))),
            ("Name", Some(json!(secret.name))),
            ("VersionId", version_id.map(Value::from)),
        ]))
    }

    fn delete_secret(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let window = params.integer("RecoveryWindowInDays", 7..=30)?;
        let force = params.boolean("ForceDeleteWithoutRecovery")?.unwrap_or(false);
        if force && window.is_some() {
            return Err(invalid_parameter(
                "You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.",
            ));
        }
        let secret = self.lookup(id)?;
        if force {
            let reply = json!({ "ARN": secret.arn, "Name": secret.name, "DeletionDate": epoch(now) });
            let name = secret.name.clone();
            self.secrets.remove(&name);
            return Ok(reply);
        }
        if secret.deletion.is_some() {
            return Err(invalid_request(
                "You can't perform this operation on the secret because it was already scheduled for deletion.",
            ));
        }
        let days = window.unwrap_or(DEFAULT_RECOVERY_DAYS) as u64;
        let purge_at = now
            .checked_add(Duration::from_secs(days * SECONDS_PER_DAY))
            .ok_or_else(|| invalid_request("the recovery window would end out of range"))?;
        secret.deletion = Some(Deletion { at: now, purge_at });
        secret.last_changed = now;
        Ok(json!({ "ARN": secret.arn, "Name": secret.name, "DeletionDate": epoch(purge_at) }))
    }

    fn restore_secret(&mut self, params: Params, now: SystemTime) -> Reply {
        let secret = self.lookup(secret_id(params)?)?;
        if secret.deletion.take().is_some() {
            secret.last_changed = now;
        }
        Ok(secret.ids())
    }

    fn tag_resource(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let tags = required("Tags", tags(params)?)?;
        let secret = self.live(id)?;
        secret.merge_tags(tags);
        secret.last_changed = now;
        Ok(json!({}))
    }

    fn untag_resource(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let keys = required("TagKeys", params.strings("TagKeys", 0..=50, 1..=128)?)?;
        let secret = self.live(id)?;
        secret.tags.retain(|(key, _)| !keys.contains(&key.as_str()));
        secret.last_changed = now;
        Ok(json!({}))
    }

    fn get_resource_policy(&mut self, params: Params, _now: SystemTime) -> Reply {
        let secret = self.lookup(secret_id(params)?)?;
        Ok(object([
            ("ARN", Some(json!(secret.arn))),
            ("Name", Some(json!(secret.name))),
            ("ResourcePolicy", secret.policy.as_deref().map(Value::from)),
        ]))
    }

    /// Stores the policy after checking it is a JSON object; the dev store
    /// never evaluates it (`BlockPublicPolicy` is ignored for the same reason).
    fn put_resource_policy(&mut self, params: Params, now: SystemTime) -> Reply {
        let id = secret_id(params)?;
        let policy = required("ResourcePolicy", params.string("ResourcePolicy", 1..=20_480)?)?;
        if !serde_json::from_str::<Value>(policy).is_ok_and(|parsed| parsed.is_object()) {
            return Err(ServiceError::new(
                400,
                "MalformedPolicyDocumentException",
                "The resource policy must be a JSON object.",
            ));
        }
        let secret = self.live(id)?;
        secret.policy = Some(policy.to_owned());
        secret.last_changed = now;
        Ok(secret.ids())
    }

    fn delete_resource_policy(&mut self, params: Params, now: SystemTime) -> Reply {
        let secret = self.live(secret_id(params)?)?;
        secret.policy = None;
        secret.last_changed = now;
        Ok(secret.ids())
    }

    /// Always refused (see the module docs); the secret is still looked up
    /// first so that a wrong id gets the same error as on AWS.
    fn rotate_secret(&mut self, params: Params, _now: SystemTime) -> Reply {
        self.live(secret_id(params)?)?;
        Err(invalid_request(
            "rotation is not supported by the keygate dev store: it has no rotation Lambda; \
             store a new value with PutSecretValue instead",
        ))
    }
}

const LOWERCASE: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPERCASE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";

fn random_password(params: Params) -> Reply {
    let length = params.integer("PasswordLength", 1..=4096)?.unwrap_or(32);
    let excluded = params.string("ExcludeCharacters", 0..=4096)?.unwrap_or_default();
    let mut kinds: Vec<Vec<char>> = Vec::new();
    for (flag, chars) in [
        ("ExcludeLowercase", LOWERCASE),
        ("ExcludeUppercase", UPPERCASE),
        ("ExcludeNumbers", DIGITS),
        ("ExcludePunctuation", PUNCTUATION),
    ] {
        if !params.boolean(flag)?.unwrap_or(false) {
            let kind: Vec<char> = chars.chars().filter(|c| !excluded.contains(*c)).collect();
            if !kind.is_empty() {
                kinds.push(kind);
            }
        }
    }
    let mut pool = kinds.concat();
    // A space may appear but is never required, as AWS documents.
    if params.boolean("IncludeSpace")?.unwrap_or(false) && !excluded.contains(' ') {
        pool.push(' ');
    }
    let require_each = params.boolean("RequireEachIncludedType")?.unwrap_or(true);
    if pool.is_empty() {
        return Err(invalid_parameter(
            "every character is excluded, so no password can be generated",
        ));
    }
    if require_each && length < kinds.len() {
        return Err(invalid_parameter(
            "PasswordLength is too short to include every required type of character",
        ));
    }
    // ThreadRng is a cryptographically secure generator.
    let mut rng = rand::thread_rng();
    let mut password: Vec<char> = Vec::with_capacity(length);
    if require_each {
        password.extend(kinds.iter().filter_map(|kind| kind.choose(&mut rng).copied()));
    }
    let missing = length - password.len();
    password.extend((0..missing).filter_map(|_| pool.choose(&mut rng).copied()));
    password.shuffle(&mut rng);
    Ok(json!({ "RandomPassword": password.into_iter().collect::<String>() }))
}
