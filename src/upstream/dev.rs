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
//! - ListSecrets sorts by name only (AWS's default is creation date), so it
//!   refuses any other `SortBy`; ascending unless `SortOrder` is `desc`. A
//!   `NextToken` is only meaningful with the `SortOrder` and `Filters` it came
//!   from.
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
        // An empty HTTP body may reach us as `null`; AWS reads it as `{}`.
        let empty = Map::new();
        let params = match body {
            Value::Null => Params(&empty),
            other => Params::new(other, "the request body")?,
        };
        let mut state = self.lock();
        state.purge_expired(now);
        handler(&mut state, params, now)
    }

    /// Handlers check everything before they change anything, and do not
    /// panic, so the state behind a poisoned lock is still consistent: using
    /// it beats failing every later call.
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
    ServiceError::new(
        400,
        "InvalidNextTokenException",
        "The NextToken value is invalid.",
    )
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

    fn string(
        self,
        name: &str,
        chars: RangeInclusive<usize>,
    ) -> Result<Option<&'a str>, ServiceError> {
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

    fn integer(
        self,
        name: &str,
        range: RangeInclusive<usize>,
    ) -> Result<Option<usize>, ServiceError> {
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

    fn array(
        self,
        name: &str,
        items: RangeInclusive<usize>,
    ) -> Result<Option<&'a [Value]>, ServiceError> {
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

    fn objects(
        self,
        name: &str,
        items: RangeInclusive<usize>,
    ) -> Result<Option<Vec<Params<'a>>>, ServiceError> {
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
    if !(1..=MAX_SECRET_BYTES).contains(&value.len()) {
        return Err(invalid_parameter(format!(
            "the secret value must be 1 to {MAX_SECRET_BYTES} bytes long"
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
    items
        .into_iter()
        .map(tag)
        .collect::<Result<_, _>>()
        .map(Some)
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
        self.versions
            .iter()
            .position(|version| version.has_stage(stage))
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
        let mut plain = self
            .values
            .iter()
            .filter(|v| !v.starts_with('!'))
            .peekable();
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
                    .chain(
                        secret
                            .tags
                            .iter()
                            .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
                    )
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
        Ok(self
            .lookup(secret_id(params)?)?
            .summary("VersionIdsToStages"))
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
        // Refused rather than ignored, so no caller mistakes name order for the
        // order it asked for.
        if params
            .string("SortBy", 0..=32)?
            .is_some_and(|by| by != "name")
        {
            return Err(invalid_parameter(
                "the keygate dev store can only sort secrets by name",
            ));
        }
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
            (
                "Versions",
                Some(page.into_iter().map(Version::summary).collect()),
            ),
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
        let force = params
            .boolean("ForceDeleteWithoutRecovery")?
            .unwrap_or(false);
        if force && window.is_some() {
            return Err(invalid_parameter(
                "You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.",
            ));
        }
        let secret = self.lookup(id)?;
        if force {
            let reply =
                json!({ "ARN": secret.arn, "Name": secret.name, "DeletionDate": epoch(now) });
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
        let keys = required(
            "TagKeys",
            params.strings("TagKeys", 0..=usize::MAX, 1..=128)?,
        )?;
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
        let policy = required(
            "ResourcePolicy",
            params.string("ResourcePolicy", 1..=20_480)?,
        )?;
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
    let excluded = params
        .string("ExcludeCharacters", 0..=4096)?
        .unwrap_or_default();
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
        password.extend(
            kinds
                .iter()
                .filter_map(|kind| kind.choose(&mut rng).copied()),
        );
    }
    let missing = length - password.len();
    password.extend((0..missing).filter_map(|_| pool.choose(&mut rng).copied()));
    password.shuffle(&mut rng);
    Ok(json!({ "RandomPassword": password.into_iter().collect::<String>() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;
    /// When most test calls happen: a minute after the seeds were created.
    const T1: u64 = T0 + 60;
    const DAY: u64 = SECONDS_PER_DAY;
    const TOKEN_A: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    const TOKEN_B: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
    const NOT_FOUND: &str = "ResourceNotFoundException";
    const BAD_PARAM: &str = "InvalidParameterException";
    const BAD_REQUEST: &str = "InvalidRequestException";
    const EXISTS: &str = "ResourceExistsException";
    const BAD_TOKEN: &str = "InvalidNextTokenException";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Two seeded secrets; their values must never show up in an error.
    fn store() -> DevStore {
        DevStore::new(
            "eu-west-1",
            &[
                ("app/db".to_owned(), "hunter2".to_owned()),
                ("app/api".to_owned(), "s3cr3t-api".to_owned()),
            ],
            at(T0),
        )
    }

    fn empty_store() -> DevStore {
        DevStore::new("eu-west-1", &[], at(T0))
    }

    fn ok_at(store: &DevStore, operation: &str, body: Value, secs: u64) -> Value {
        match store.call(operation, &body, at(secs)) {
            Ok(value) => value,
            Err(error) => panic!("{operation} {body}: {error:?}"),
        }
    }

    fn ok(store: &DevStore, operation: &str, body: Value) -> Value {
        ok_at(store, operation, body, T1)
    }

    fn error_at(store: &DevStore, operation: &str, body: Value, secs: u64) -> ServiceError {
        match store.call(operation, &body, at(secs)) {
            Ok(value) => panic!("{operation} {body}: expected an error, got {value}"),
            Err(error) => {
                assert_eq!(error.status, 400, "{error:?}");
                for seeded in ["hunter2", "s3cr3t"] {
                    assert!(!error.message.contains(seeded), "{error:?}");
                }
                error
            }
        }
    }

    fn error(store: &DevStore, operation: &str, body: Value) -> ServiceError {
        error_at(store, operation, body, T1)
    }

    enum Want {
        /// The member at this JSON pointer has this value.
        Field(&'static str, Value),
        /// The call fails with this error type.
        Fails(&'static str),
    }
    use Want::{Fails, Field};

    /// Runs (operation, request, expectation) rows in order against `store`.
    fn check(store: &DevStore, rows: Vec<(&str, Value, Want)>) {
        for (operation, body, want) in rows {
            match want {
                Field(pointer, expected) => {
                    let got = ok(store, operation, body.clone());
                    let at = got.pointer(pointer);
                    assert_eq!(at, Some(&expected), "{operation} {body} -> {got}");
                }
                Fails(kind) => {
                    let got = error(store, operation, body.clone());
                    assert_eq!(got.error_type, kind, "{operation} {body} -> {got:?}");
                }
            }
        }
    }

    fn text(value: &Value) -> String {
        value.as_str().unwrap_or_default().to_owned()
    }

    fn arn_of(store: &DevStore, id: &str) -> String {
        text(&ok(store, "DescribeSecret", json!({ "SecretId": id }))["ARN"])
    }

    fn names(list: &Value) -> Vec<String> {
        let items = list.as_array().cloned().unwrap_or_default();
        items.iter().map(|item| text(&item["Name"])).collect()
    }

    fn count(list: &Value) -> usize {
        list.as_array().map_or(0, Vec::len)
    }

    /// Creates `name` with a value, plus the members in `extra`.
    fn create(store: &DevStore, name: &str, extra: Value) {
        let mut body = json!({ "Name": name, "SecretString": format!("value of {name}") });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        ok(store, "CreateSecret", body);
    }

    fn tag(key: &str, value: &str) -> Value {
        json!({ "Key": key, "Value": value })
    }

    /// Follows NextToken through every page, returning `member` of each item
    /// of `list` on each page.
    fn pages(
        store: &DevStore,
        operation: &str,
        body: Value,
        list: &str,
        member: &str,
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut body = body;
        for _ in 0..20 {
            let got = ok(store, operation, body.clone());
            let items = got[list].as_array().cloned().unwrap_or_default();
            pages.push(items.iter().map(|item| text(&item[member])).collect());
            match got.get("NextToken") {
                Some(token) => body["NextToken"] = token.clone(),
                None => return pages,
            }
        }
        panic!("{operation} never stopped paging");
    }

    #[test]
    fn arns_have_region_account_name_and_random_suffix() {
        let arn = arn_of(&store(), "app/db");
        let prefix = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-";
        let suffix = arn.strip_prefix(prefix).unwrap_or_default();
        assert_eq!(suffix.len(), 6, "{arn}");
        assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()), "{arn}");
    }

    #[test]
    fn get_secret_value_by_name_arn_version_and_stage() {
        let s = store();
        let arn = arn_of(&s, "app/db");
        let partial = arn[..arn.len() - 7].to_owned();
        let got = ok(&s, "GetSecretValue", json!({ "SecretId": "app/db" }));
        let current = text(&got["VersionId"]);
        assert!(uuid::Uuid::parse_str(&current).is_ok(), "{current}");
        let expected = json!({
            "ARN": arn, "Name": "app/db", "VersionId": current, "SecretString": "hunter2",
            "VersionStages": ["AWSCURRENT"], "CreatedDate": T0 as f64,
        });
        assert_eq!(got, expected);
        let get = "GetSecretValue";
        #[rustfmt::skip]
        let rows = vec![
            (get, json!({ "SecretId": arn }), Field("/SecretString", json!("hunter2"))),
            (get, json!({ "SecretId": partial }), Field("/Name", json!("app/db"))),
            (get, json!({ "SecretId": "app/api" }), Field("/SecretString", json!("s3cr3t-api"))),
            (get, json!({ "SecretId": "app/db", "VersionId": current }), Field("/SecretString", json!("hunter2"))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSCURRENT" }), Field("/VersionId", json!(current))),
            (get, json!({ "SecretId": "app/db", "VersionId": current, "VersionStage": "AWSCURRENT" }), Field("/VersionStages/0", json!("AWSCURRENT"))),
            (get, json!({ "SecretId": "app/db", "VersionId": current, "VersionStage": "AWSPREVIOUS" }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": "app/db", "VersionId": TOKEN_A }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": "app/db", "VersionId": "short" }), Fails(BAD_PARAM)),
            (get, json!({ "SecretId": "app/db", "VersionStage": ["AWSCURRENT"] }), Fails(BAD_PARAM)),
            (get, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": format!("{arn}x") }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope" }), Fails(NOT_FOUND)),
            (get, json!({}), Fails(BAD_PARAM)),
            (get, json!({ "SecretId": 7 }), Fails(BAD_PARAM)),
            (get, json!({ "SecretId": "" }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
        let missing = error(&s, get, json!({}));
        assert_eq!(missing.message, "missing required parameter SecretId");
    }

    #[test]
    fn describe_secret_reports_metadata_and_last_access() {
        let s = empty_store();
        let tags = json!([tag("env", "dev"), tag("team", "core")]);
        let extra = json!({ "Description": "the key", "KmsKeyId": "alias/dev", "Tags": tags });
        create(&s, "svc/key", extra);
        let listed = ok(&s, "ListSecretVersionIds", json!({ "SecretId": "svc/key" }));
        let version = text(&listed["Versions"][0]["VersionId"]);
        let described = ok(&s, "DescribeSecret", json!({ "SecretId": "svc/key" }));
        let expected = json!({
            "ARN": arn_of(&s, "svc/key"), "Name": "svc/key", "Description": "the key",
            "KmsKeyId": "alias/dev", "RotationEnabled": false, "LastChangedDate": T1 as f64,
            "Tags": tags, "VersionIdsToStages": { version: ["AWSCURRENT"] }, "CreatedDate": T1 as f64,
        });
        assert_eq!(described, expected);

        // A read on a later day records the start of that day.
        ok_at(
            &s,
            "GetSecretValue",
            json!({ "SecretId": "svc/key" }),
            T1 + DAY,
        );
        let day = (T1 + DAY) / DAY * DAY;
        let describe = "DescribeSecret";
        #[rustfmt::skip]
        let rows = vec![
            (describe, json!({ "SecretId": "svc/key" }), Field("/LastAccessedDate", json!(day as f64))),
            ("ListSecretVersionIds", json!({ "SecretId": "svc/key" }), Field("/Versions/0/LastAccessedDate", json!(day as f64))),
            (describe, json!({ "SecretId": "svc/none" }), Fails(NOT_FOUND)),
            (describe, json!({ "SecretId": null }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);

        let seeded = ok(&store(), describe, json!({ "SecretId": "app/db" }));
        for absent in ["Description", "KmsKeyId", "LastAccessedDate", "DeletedDate"] {
            assert!(seeded.get(absent).is_none(), "{absent}: {seeded}");
        }
        assert_eq!(seeded["Tags"], json!([]));
    }

    #[test]
    fn two_puts_move_current_and_previous() {
        let s = store();
        let first = text(&ok(&s, "GetSecretValue", json!({ "SecretId": "app/db" }))["VersionId"]);
        let body =
            json!({ "SecretId": "app/db", "SecretString": "one", "ClientRequestToken": TOKEN_A });
        let put = ok(&s, "PutSecretValue", body);
        let expected = json!({
            "ARN": arn_of(&s, "app/db"), "Name": "app/db", "VersionId": TOKEN_A, "VersionStages": ["AWSCURRENT"],
        });
        assert_eq!(put, expected);
        let body =
            json!({ "SecretId": "app/db", "SecretString": "two", "ClientRequestToken": TOKEN_B });
        ok(&s, "PutSecretValue", body);
        let get = "GetSecretValue";
        let stages = json!({ TOKEN_A: ["AWSPREVIOUS"], TOKEN_B: ["AWSCURRENT"] });
        #[rustfmt::skip]
        let rows = vec![
            (get, json!({ "SecretId": "app/db" }), Field("/SecretString", json!("two"))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretString", json!("one"))),
            (get, json!({ "SecretId": "app/db", "VersionId": first }), Field("/SecretString", json!("hunter2"))),
            (get, json!({ "SecretId": "app/db", "VersionId": first }), Field("/VersionStages", json!([]))),
            ("DescribeSecret", json!({ "SecretId": "app/db" }), Field("/VersionIdsToStages", stages)),
            ("ListSecretVersionIds", json!({ "SecretId": "app/db" }), Field("/Versions/1/VersionStages", json!(["AWSCURRENT"]))),
            ("ListSecretVersionIds", json!({ "SecretId": "app/db", "IncludeDeprecated": true }), Field("/Versions/0/VersionId", json!(first))),
        ];
        check(&s, rows);
        let listed = ok(&s, "ListSecretVersionIds", json!({ "SecretId": "app/db" }));
        assert_eq!(count(&listed["Versions"]), 2, "{listed}");
    }

    #[test]
    fn client_request_token_makes_puts_idempotent() {
        let s = store();
        let with_token = |value: &str, token: &str| json!({ "SecretId": "app/db", "SecretString": value, "ClientRequestToken": token });
        let (put, update) = ("PutSecretValue", "UpdateSecret");
        #[rustfmt::skip]
        let rows = vec![
            (put, with_token("one", TOKEN_A), Field("/VersionId", json!(TOKEN_A))),
            (put, with_token("one", TOKEN_A), Field("/VersionStages", json!(["AWSCURRENT"]))),
            (put, with_token("two", TOKEN_A), Fails(EXISTS)),
            (update, with_token("one", TOKEN_A), Field("/VersionId", json!(TOKEN_A))),
            (update, with_token("two", TOKEN_A), Fails(EXISTS)),
            (put, with_token("one", "too-short"), Fails(BAD_PARAM)),
            (put, with_token("one", &"x".repeat(65)), Fails(BAD_PARAM)),
            ("GetSecretValue", json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretString", json!("hunter2"))),
        ];
        check(&s, rows);
        // The retries made no versions: there are the seed's and TOKEN_A's only.
        let body = json!({ "SecretId": "app/db", "IncludeDeprecated": true });
        let listed = ok(&s, "ListSecretVersionIds", body);
        assert_eq!(count(&listed["Versions"]), 2, "{listed}");
        let conflict = error(&s, put, with_token("two", TOKEN_A));
        assert_eq!(
            conflict.message,
            "You can't modify an existing version, you can only create a new version."
        );
    }

    #[test]
    fn put_secret_value_stages_binary_and_errors() {
        let s = store();
        let binary = STANDARD.encode([0u8, 159, 146, 150]);
        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        let (put, get) = ("PutSecretValue", "GetSecretValue");
        #[rustfmt::skip]
        let rows = vec![
            // A custom label leaves AWSCURRENT where it was.
            (put, json!({ "SecretId": "app/db", "SecretString": "one", "VersionStages": ["TEST"] }), Field("/VersionStages", json!(["TEST"]))),
            (get, json!({ "SecretId": "app/db" }), Field("/SecretString", json!("hunter2"))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "TEST" }), Field("/SecretString", json!("one"))),
            // Labels move: TEST leaves "one", AWSCURRENT leaves the seed as AWSPREVIOUS.
            (put, json!({ "SecretId": "app/db", "SecretBinary": binary, "VersionStages": ["AWSCURRENT", "TEST"] }), Field("/VersionStages", json!(["AWSCURRENT", "TEST"]))),
            (get, json!({ "SecretId": "app/db" }), Field("/SecretBinary", json!(binary))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretString", json!("hunter2"))),
            (put, json!({ "SecretId": "app/db", "SecretString": "three" }), Field("/VersionStages", json!(["AWSCURRENT"]))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretBinary", json!(binary))),
            (put, json!({ "SecretId": "app/db" }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": "one", "SecretBinary": binary }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretBinary": "not base64!" }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": big }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": "" }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretBinary": "" }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": "one", "VersionStages": [] }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": "one", "VersionStages": [""] }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "app/db", "SecretString": 5 }), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "nope", "SecretString": "one" }), Fails(NOT_FOUND)),
            (put, json!({ "SecretString": "one" }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
    }

    #[test]
    fn old_unlabelled_versions_are_pruned() {
        let s = store();
        for n in 0..MAX_VERSIONS + 5 {
            let body = json!({ "SecretId": "app/db", "SecretString": format!("v{n}") });
            ok(&s, "PutSecretValue", body);
        }
        let body = json!({ "SecretId": "app/db", "IncludeDeprecated": true });
        let listed = ok(&s, "ListSecretVersionIds", body);
        assert_eq!(count(&listed["Versions"]), MAX_VERSIONS);
        let get = "GetSecretValue";
        #[rustfmt::skip]
        let rows = vec![
            (get, json!({ "SecretId": "app/db" }), Field("/SecretString", json!("v104"))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretString", json!("v103"))),
        ];
        check(&s, rows);
    }

    #[test]
    fn create_secret_cases() {
        let s = store();
        let binary = STANDARD.encode(b"\x00\x01binary");
        let with_token = |name: &str, value: &str| json!({ "Name": name, "SecretString": value, "ClientRequestToken": TOKEN_A });
        let (create, get) = ("CreateSecret", "GetSecretValue");
        #[rustfmt::skip]
        let rows = vec![
            (create, with_token("new/one", "one"), Field("/VersionId", json!(TOKEN_A))),
            (get, json!({ "SecretId": "new/one" }), Field("/SecretString", json!("one"))),
            // An SDK's retry of that call succeeds; anything else on the name fails.
            (create, with_token("new/one", "one"), Field("/Name", json!("new/one"))),
            (create, with_token("new/one", "two"), Fails(EXISTS)),
            (create, json!({ "Name": "app/db", "SecretString": "two" }), Fails(EXISTS)),
            (create, json!({ "Name": "app/db" }), Fails(EXISTS)),
            (create, json!({ "Name": "bin", "SecretBinary": binary }), Field("/Name", json!("bin"))),
            (get, json!({ "SecretId": "bin" }), Field("/SecretBinary", json!(binary))),
            // Without a value there is no version, so nothing to read yet.
            (create, json!({ "Name": "empty" }), Field("/Name", json!("empty"))),
            (get, json!({ "SecretId": "empty" }), Fails(NOT_FOUND)),
            ("DescribeSecret", json!({ "SecretId": "empty" }), Field("/VersionIdsToStages", json!({}))),
            ("PutSecretValue", json!({ "SecretId": "empty", "SecretString": "one" }), Field("/VersionStages", json!(["AWSCURRENT"]))),
            (get, json!({ "SecretId": "empty" }), Field("/SecretString", json!("one"))),
            (create, json!({ "Name": "bad name", "SecretString": "one" }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "arn:aws:x", "SecretString": "one" }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "x".repeat(513) }), Fails(BAD_PARAM)),
            (create, json!({ "SecretString": "one" }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "both", "SecretString": "one", "SecretBinary": binary }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "tags", "Tags": [{ "Value": "no key" }] }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "tags", "Tags": { "Key": "k" } }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "tags", "Tags": ["k"] }), Fails(BAD_PARAM)),
            (create, json!({ "Name": "tags", "ClientRequestToken": 5 }), Fails(BAD_PARAM)),
            ("DescribeSecret", json!({ "SecretId": "tags" }), Fails(NOT_FOUND)),
        ];
        check(&s, rows);
        let created = ok(&s, create, json!({ "Name": "plain" }));
        assert_eq!(
            created,
            json!({ "ARN": arn_of(&s, "plain"), "Name": "plain" })
        );
        let taken = error(&s, create, json!({ "Name": "plain" }));
        assert_eq!(
            taken.message,
            "The operation failed because the secret plain already exists."
        );
    }

    #[test]
    fn update_secret_changes_metadata_and_value() {
        let s = store();
        let (update, describe, get) = ("UpdateSecret", "DescribeSecret", "GetSecretValue");
        #[rustfmt::skip]
        let rows = vec![
            (update, json!({ "SecretId": "app/db", "Description": "db creds", "KmsKeyId": "alias/k" }), Field("/Name", json!("app/db"))),
            (describe, json!({ "SecretId": "app/db" }), Field("/Description", json!("db creds"))),
            (describe, json!({ "SecretId": "app/db" }), Field("/KmsKeyId", json!("alias/k"))),
            (update, json!({ "SecretId": "app/db", "SecretString": "one", "ClientRequestToken": TOKEN_B }), Field("/VersionId", json!(TOKEN_B))),
            (get, json!({ "SecretId": "app/db" }), Field("/SecretString", json!("one"))),
            (get, json!({ "SecretId": "app/db", "VersionStage": "AWSPREVIOUS" }), Field("/SecretString", json!("hunter2"))),
            (describe, json!({ "SecretId": "app/db" }), Field("/Description", json!("db creds"))),
            // A failed update changes nothing.
            (update, json!({ "SecretId": "app/db", "Description": "lost", "SecretString": "two", "ClientRequestToken": TOKEN_B }), Fails(EXISTS)),
            (describe, json!({ "SecretId": "app/db" }), Field("/Description", json!("db creds"))),
            (update, json!({ "SecretId": "app/db", "Description": 3 }), Fails(BAD_PARAM)),
            (update, json!({ "SecretId": "nope", "Description": "x" }), Fails(NOT_FOUND)),
        ];
        check(&s, rows);
        let updated = ok(
            &s,
            update,
            json!({ "SecretId": "app/db", "Description": "again" }),
        );
        assert_eq!(
            updated,
            json!({ "ARN": arn_of(&s, "app/db"), "Name": "app/db" })
        );
    }

    #[test]
    fn delete_schedules_and_restore_undoes() {
        let s = store();
        let deleted = ok(&s, "DeleteSecret", json!({ "SecretId": "app/db" }));
        let deletion_date = (T1 + 30 * DAY) as f64;
        let expected =
            json!({ "ARN": arn_of(&s, "app/db"), "Name": "app/db", "DeletionDate": deletion_date });
        assert_eq!(deleted, expected);
        let marked = error(&s, "GetSecretValue", json!({ "SecretId": "app/db" }));
        assert_eq!(marked, marked_for_deletion());
        let db = json!({ "SecretId": "app/db" });
        let (delete, restore, list) = ("DeleteSecret", "RestoreSecret", "ListSecrets");
        #[rustfmt::skip]
        let rows = vec![
            ("DescribeSecret", db.clone(), Field("/DeletedDate", json!(T1 as f64))),
            (list, json!({}), Field("/SecretList/0/Name", json!("app/api"))),
            (list, json!({ "IncludePlannedDeletion": true }), Field("/SecretList/1/DeletedDate", json!(T1 as f64))),
            ("ListSecretVersionIds", db.clone(), Field("/Name", json!("app/db"))),
            ("GetResourcePolicy", db.clone(), Field("/Name", json!("app/db"))),
            ("BatchGetSecretValue", json!({ "SecretIdList": ["app/db"] }), Field("/Errors/0/ErrorCode", json!(BAD_REQUEST))),
            (delete, db.clone(), Fails(BAD_REQUEST)),
            ("PutSecretValue", json!({ "SecretId": "app/db", "SecretString": "one" }), Fails(BAD_REQUEST)),
            ("UpdateSecret", json!({ "SecretId": "app/db", "Description": "x" }), Fails(BAD_REQUEST)),
            ("TagResource", json!({ "SecretId": "app/db", "Tags": [] }), Fails(BAD_REQUEST)),
            ("UntagResource", json!({ "SecretId": "app/db", "TagKeys": [] }), Fails(BAD_REQUEST)),
            ("PutResourcePolicy", json!({ "SecretId": "app/db", "ResourcePolicy": "{}" }), Fails(BAD_REQUEST)),
            ("DeleteResourcePolicy", db.clone(), Fails(BAD_REQUEST)),
            ("CreateSecret", json!({ "Name": "app/db", "SecretString": "one" }), Fails(BAD_REQUEST)),
            (restore, db.clone(), Field("/Name", json!("app/db"))),
            ("GetSecretValue", db.clone(), Field("/SecretString", json!("hunter2"))),
            // Restoring a secret that is not scheduled for deletion is harmless.
            (restore, db.clone(), Field("/Name", json!("app/db"))),
            (restore, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
            (delete, json!({ "SecretId": "app/db", "RecoveryWindowInDays": 6 }), Fails(BAD_PARAM)),
            (delete, json!({ "SecretId": "app/db", "RecoveryWindowInDays": 31 }), Fails(BAD_PARAM)),
            (delete, json!({ "SecretId": "app/db", "RecoveryWindowInDays": 7, "ForceDeleteWithoutRecovery": true }), Fails(BAD_PARAM)),
            (delete, json!({ "SecretId": "app/db", "ForceDeleteWithoutRecovery": "yes" }), Fails(BAD_PARAM)),
            (delete, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
        ];
        check(&s, rows);
        let restored = ok(&s, "DescribeSecret", db);
        assert!(restored.get("DeletedDate").is_none(), "{restored}");
    }

    #[test]
    fn deleted_secrets_are_purged_after_the_window() {
        let s = store();
        let old_arn = arn_of(&s, "app/db");
        let body = json!({ "SecretId": "app/db", "RecoveryWindowInDays": 7 });
        let deleted = ok(&s, "DeleteSecret", body);
        let purge_at = T1 + 7 * DAY;
        assert_eq!(deleted["DeletionDate"], json!(purge_at as f64));
        let db = json!({ "SecretId": "app/db" });
        ok_at(&s, "DescribeSecret", db.clone(), purge_at - 1);
        let gone = error_at(&s, "DescribeSecret", db, purge_at);
        assert_eq!(gone, secret_not_found());
        let body = json!({ "Name": "app/db", "SecretString": "one" });
        ok_at(&s, "CreateSecret", body, purge_at + DAY);
        assert_ne!(arn_of(&s, "app/db"), old_arn);
        let gone = error(&s, "GetSecretValue", json!({ "SecretId": old_arn }));
        assert_eq!(gone, secret_not_found());
    }

    #[test]
    fn force_delete_removes_at_once() {
        let s = store();
        let arn = arn_of(&s, "app/db");
        let delete = "DeleteSecret";
        #[rustfmt::skip]
        let rows = vec![
            (delete, json!({ "SecretId": arn, "ForceDeleteWithoutRecovery": true }), Field("/DeletionDate", json!(T1 as f64))),
            ("DescribeSecret", json!({ "SecretId": "app/db" }), Fails(NOT_FOUND)),
            // Force also purges a secret already scheduled for deletion.
            (delete, json!({ "SecretId": "app/api" }), Field("/Name", json!("app/api"))),
            (delete, json!({ "SecretId": "app/api", "ForceDeleteWithoutRecovery": true }), Field("/Name", json!("app/api"))),
            ("ListSecrets", json!({ "IncludePlannedDeletion": true }), Field("/SecretList", json!([]))),
        ];
        check(&s, rows);
    }

    #[test]
    fn list_secrets_filters_and_negation() {
        let s = empty_store();
        let extra = json!({ "Description": "Primary Database", "Tags": [tag("env", "prod"), tag("team", "core")] });
        create(&s, "prod/db", extra);
        create(
            &s,
            "prod/cache",
            json!({ "Description": "cache cluster", "Tags": [tag("env", "prod")] }),
        );
        create(
            &s,
            "dev/db",
            json!({ "Description": "dev database", "Tags": [tag("env", "dev")] }),
        );
        #[rustfmt::skip]
        let rows: Vec<(Value, Vec<&str>)> = vec![
            (json!([]), vec!["dev/db", "prod/cache", "prod/db"]),
            (json!([{ "Key": "name", "Values": ["prod"] }]), vec!["prod/cache", "prod/db"]),
            (json!([{ "Key": "name", "Values": ["Prod"] }]), vec![]),
            (json!([{ "Key": "name", "Values": ["!prod"] }]), vec!["dev/db"]),
            (json!([{ "Key": "name", "Values": ["prod/db", "dev"] }]), vec!["dev/db", "prod/db"]),
            (json!([{ "Key": "name", "Values": ["prod", "!prod/c"] }]), vec!["prod/db"]),
            (json!([{ "Key": "name", "Values": ["!prod", "!dev"] }]), vec![]),
            (json!([{ "Key": "description", "Values": ["primary"] }]), vec!["prod/db"]),
            (json!([{ "Key": "description", "Values": ["!DEV"] }]), vec!["prod/cache", "prod/db"]),
            (json!([{ "Key": "tag-key", "Values": ["te"] }]), vec!["prod/db"]),
            (json!([{ "Key": "tag-key", "Values": ["!team"] }]), vec!["dev/db", "prod/cache"]),
            (json!([{ "Key": "tag-value", "Values": ["prod"] }]), vec!["prod/cache", "prod/db"]),
            (json!([{ "Key": "tag-value", "Values": ["Prod"] }]), vec![]),
            (json!([{ "Key": "all", "Values": ["DATABASE"] }]), vec!["dev/db", "prod/db"]),
            (json!([{ "Key": "all", "Values": ["core db"] }]), vec!["prod/db"]),
            (json!([{ "Key": "all", "Values": ["!clus"] }]), vec!["dev/db", "prod/db"]),
            (json!([{ "Key": "name", "Values": ["prod"] }, { "Key": "description", "Values": ["cache"] }]), vec!["prod/cache"]),
            (json!([{ "Key": "name", "Values": ["prod"] }, { "Key": "tag-value", "Values": ["!prod"] }]), vec![]),
        ];
        for (filters, want) in rows {
            let got = ok(&s, "ListSecrets", json!({ "Filters": filters }));
            assert_eq!(names(&got["SecretList"]), want, "{filters}");
            assert!(got.get("NextToken").is_none(), "{got}");
        }

        let body = json!({ "Filters": [{ "Key": "name", "Values": ["dev"] }] });
        let entry = ok(&s, "ListSecrets", body)["SecretList"][0].clone();
        assert_eq!(entry["Tags"], json!([tag("env", "dev")]));
        assert_eq!(entry["Description"], json!("dev database"));
        let stages = entry["SecretVersionsToStages"].as_object().map(Map::len);
        assert_eq!(stages, Some(1), "{entry}");
        assert!(entry.get("VersionIdsToStages").is_none(), "{entry}");

        let list = "ListSecrets";
        #[rustfmt::skip]
        let rows = vec![
            (list, json!({ "Filters": [{ "Key": "owning-service", "Values": ["x"] }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [{ "Key": "name" }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [{ "Key": "name", "Values": [] }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [{ "Key": "name", "Values": vec!["a"; 11] }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [{ "Key": "name", "Values": ["x".repeat(513)] }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [{ "Values": ["a"] }] }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": { "Key": "name" } }), Fails(BAD_PARAM)),
            (list, json!({ "Filters": [7] }), Fails(BAD_PARAM)),
            (list, json!({ "IncludePlannedDeletion": 1 }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
    }

    #[test]
    fn list_secrets_pages_with_opaque_tokens() {
        let s = empty_store();
        for name in ["s1", "s2", "s3", "s4", "s5"] {
            create(&s, name, json!({}));
        }
        let list = "ListSecrets";
        let asc = pages(&s, list, json!({ "MaxResults": 2 }), "SecretList", "Name");
        assert_eq!(asc, [vec!["s1", "s2"], vec!["s3", "s4"], vec!["s5"]]);
        let body = json!({ "MaxResults": 2, "SortOrder": "desc" });
        let desc = pages(&s, list, body, "SecretList", "Name");
        assert_eq!(desc, [vec!["s5", "s4"], vec!["s3", "s2"], vec!["s1"]]);
        let exact = pages(&s, list, json!({ "MaxResults": 5 }), "SecretList", "Name");
        assert_eq!(exact, [vec!["s1", "s2", "s3", "s4", "s5"]]);

        // Deleting a listed secret between pages does not shift the next page.
        let first = ok(&s, list, json!({ "MaxResults": 2 }));
        let body = json!({ "SecretId": "s2", "ForceDeleteWithoutRecovery": true });
        ok(&s, "DeleteSecret", body);
        let next = ok(
            &s,
            list,
            json!({ "MaxResults": 2, "NextToken": first["NextToken"] }),
        );
        assert_eq!(names(&next["SecretList"]), ["s3", "s4"]);

        #[rustfmt::skip]
        let rows = vec![
            (list, json!({ "NextToken": "%%%" }), Fails(BAD_TOKEN)),
            (list, json!({ "NextToken": URL_SAFE_NO_PAD.encode([0xff, 0xfe]) }), Fails(BAD_TOKEN)),
            (list, json!({ "NextToken": 3 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": 0 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": 101 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": -1 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": 1.5 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": 1e300 }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": u64::MAX }), Fails(BAD_PARAM)),
            (list, json!({ "MaxResults": "2" }), Fails(BAD_PARAM)),
            (list, json!({ "SortOrder": "sideways" }), Fails(BAD_PARAM)),
            (list, json!({ "SortBy": "created-date" }), Fails(BAD_PARAM)),
            (list, json!({ "SortBy": "name", "SortOrder": "desc" }), Field("/SecretList/0/Name", json!("s5"))),
            (list, json!({ "MaxResults": 100 }), Field("/SecretList/3/Name", json!("s5"))),
        ];
        check(&s, rows);
    }

    #[test]
    fn list_secret_version_ids_pages_oldest_first() {
        let s = store();
        let seed = text(&ok(&s, "GetSecretValue", json!({ "SecretId": "app/db" }))["VersionId"]);
        for token in [TOKEN_A, TOKEN_B] {
            let body =
                json!({ "SecretId": "app/db", "SecretString": token, "ClientRequestToken": token });
            ok(&s, "PutSecretValue", body);
        }
        let list = "ListSecretVersionIds";
        let body = json!({ "SecretId": "app/db", "MaxResults": 2, "IncludeDeprecated": true });
        let got = pages(&s, list, body, "Versions", "VersionId");
        assert_eq!(
            got,
            [vec![seed, TOKEN_A.to_owned()], vec![TOKEN_B.to_owned()]]
        );
        let listed = ok(&s, list, json!({ "SecretId": "app/db", "MaxResults": 1 }));
        let expected = json!({
            "ARN": arn_of(&s, "app/db"), "Name": "app/db", "NextToken": listed["NextToken"],
            "Versions": [{ "VersionId": TOKEN_A, "VersionStages": ["AWSPREVIOUS"], "CreatedDate": T1 as f64 }],
        });
        assert_eq!(listed, expected);
        #[rustfmt::skip]
        let rows = vec![
            (list, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
            (list, json!({}), Fails(BAD_PARAM)),
            (list, json!({ "SecretId": "app/db", "MaxResults": 1000 }), Fails(BAD_PARAM)),
            (list, json!({ "SecretId": "app/db", "NextToken": "!" }), Fails(BAD_TOKEN)),
            (list, json!({ "SecretId": "app/db", "IncludeDeprecated": "no" }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
    }

    #[test]
    fn batch_get_secret_value_by_ids_and_filters() {
        let s = store();
        create(&s, "other", json!({}));
        ok(&s, "DeleteSecret", json!({ "SecretId": "other" }));
        create(&s, "app/novalue", json!({ "SecretString": null }));
        let batch = "BatchGetSecretValue";
        let body = json!({ "SecretIdList": ["app/db", "nope", "app/api", "other"] });
        let got = ok(&s, batch, body);
        assert_eq!(names(&got["SecretValues"]), ["app/db", "app/api"]);
        let plain = ok(&s, "GetSecretValue", json!({ "SecretId": "app/db" }));
        assert_eq!(got["SecretValues"][0], plain);
        let expected = json!([
            { "SecretId": "nope", "ErrorCode": NOT_FOUND, "Message": secret_not_found().message },
            { "SecretId": "other", "ErrorCode": BAD_REQUEST, "Message": marked_for_deletion().message },
        ]);
        assert_eq!(got["Errors"], expected);
        assert!(got.get("NextToken").is_none(), "{got}");

        let filters = json!([{ "Key": "name", "Values": ["app"] }]);
        let body = json!({ "Filters": filters, "MaxResults": 1 });
        let got = pages(&s, batch, body, "SecretValues", "SecretString");
        assert_eq!(got, [vec!["s3cr3t-api"], vec!["hunter2"], vec![]]);
        #[rustfmt::skip]
        let rows = vec![
            (batch, json!({ "Filters": filters }), Field("/SecretValues/1/Name", json!("app/db"))),
            (batch, json!({ "Filters": filters }), Field("/Errors/0/SecretId", json!("app/novalue"))),
            (batch, json!({ "Filters": filters }), Field("/Errors/0/ErrorCode", json!(NOT_FOUND))),
            (batch, json!({ "SecretIdList": ["app/db"], "Filters": filters }), Fails(BAD_PARAM)),
            (batch, json!({}), Fails(BAD_PARAM)),
            (batch, json!({ "SecretIdList": [] }), Fails(BAD_PARAM)),
            (batch, json!({ "SecretIdList": vec!["a"; 21] }), Fails(BAD_PARAM)),
            (batch, json!({ "SecretIdList": ["app/db"], "MaxResults": 1 }), Fails(BAD_PARAM)),
            (batch, json!({ "SecretIdList": ["app/db"], "NextToken": "abc" }), Fails(BAD_PARAM)),
            (batch, json!({ "Filters": filters, "MaxResults": 21 }), Fails(BAD_PARAM)),
            (batch, json!({ "Filters": filters, "NextToken": "@@" }), Fails(BAD_TOKEN)),
            (batch, json!({ "SecretIdList": "app/db" }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
    }

    #[test]
    fn tag_and_untag_resource() {
        let s = store();
        let (tag_op, untag, describe) = ("TagResource", "UntagResource", "DescribeSecret");
        let db = json!({ "SecretId": "app/db" });
        #[rustfmt::skip]
        let rows = vec![
            (tag_op, json!({ "SecretId": "app/db", "Tags": [tag("env", "dev"), tag("team", "a")] }), Field("", json!({}))),
            (tag_op, json!({ "SecretId": "app/db", "Tags": [tag("team", "b")] }), Field("", json!({}))),
            (describe, db.clone(), Field("/Tags", json!([tag("env", "dev"), tag("team", "b")]))),
            (untag, json!({ "SecretId": "app/db", "TagKeys": ["env", "absent"] }), Field("", json!({}))),
            (describe, db.clone(), Field("/Tags", json!([tag("team", "b")]))),
            (describe, db.clone(), Field("/LastChangedDate", json!(T1 as f64))),
            (tag_op, db.clone(), Fails(BAD_PARAM)),
            (tag_op, json!({ "SecretId": "app/db", "Tags": [{ "Key": "" }] }), Fails(BAD_PARAM)),
            (tag_op, json!({ "SecretId": "app/db", "Tags": [{ "Key": "k", "Value": 1 }] }), Fails(BAD_PARAM)),
            (tag_op, json!({ "SecretId": "nope", "Tags": [] }), Fails(NOT_FOUND)),
            (untag, db.clone(), Fails(BAD_PARAM)),
            (untag, json!({ "SecretId": "app/db", "TagKeys": "env" }), Fails(BAD_PARAM)),
            (untag, json!({ "SecretId": "nope", "TagKeys": [] }), Fails(NOT_FOUND)),
        ];
        check(&s, rows);
    }

    #[test]
    fn resource_policies() {
        let s = store();
        let policy = r#"{"Version":"2012-10-17","Statement":[]}"#;
        let ids = json!({ "ARN": arn_of(&s, "app/db"), "Name": "app/db" });
        let db = json!({ "SecretId": "app/db" });
        let (get, put, delete) = (
            "GetResourcePolicy",
            "PutResourcePolicy",
            "DeleteResourcePolicy",
        );
        let malformed = "MalformedPolicyDocumentException";
        #[rustfmt::skip]
        let rows = vec![
            (get, db.clone(), Field("", ids.clone())),
            (put, json!({ "SecretId": "app/db", "ResourcePolicy": policy, "BlockPublicPolicy": true }), Field("", ids.clone())),
            (get, db.clone(), Field("/ResourcePolicy", json!(policy))),
            (delete, db.clone(), Field("", ids.clone())),
            (get, db.clone(), Field("", ids)),
            (put, json!({ "SecretId": "app/db", "ResourcePolicy": "not json" }), Fails(malformed)),
            (put, json!({ "SecretId": "app/db", "ResourcePolicy": "[]" }), Fails(malformed)),
            (put, db.clone(), Fails(BAD_PARAM)),
            (put, json!({ "SecretId": "nope", "ResourcePolicy": policy }), Fails(NOT_FOUND)),
            (get, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
            (delete, json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
        ];
        check(&s, rows);
    }

    #[test]
    fn rotation_is_refused_honestly() {
        let s = store();
        let body = json!({ "SecretId": "app/db", "RotateImmediately": true });
        let refused = error(&s, "RotateSecret", body);
        assert_eq!(refused.error_type, BAD_REQUEST);
        assert!(
            refused
                .message
                .contains("not supported by the keygate dev store"),
            "{refused:?}"
        );
        #[rustfmt::skip]
        let rows = vec![
            ("RotateSecret", json!({ "SecretId": "nope" }), Fails(NOT_FOUND)),
            ("RotateSecret", json!({}), Fails(BAD_PARAM)),
            ("GetSecretValue", json!({ "SecretId": "app/db" }), Field("/SecretString", json!("hunter2"))),
        ];
        check(&s, rows);
    }

    #[test]
    fn get_random_password_honours_options() {
        let s = store();
        let any = |set: &str, password: &str| password.chars().any(|c| set.contains(c));
        // (request, length, characters allowed, character sets each required)
        #[rustfmt::skip]
        let rows: Vec<(Value, usize, String, Vec<&str>)> = vec![
            (json!({}), 32, format!("{LOWERCASE}{UPPERCASE}{DIGITS}{PUNCTUATION}"), vec![LOWERCASE, UPPERCASE, DIGITS, PUNCTUATION]),
            (json!(null), 32, format!("{LOWERCASE}{UPPERCASE}{DIGITS}{PUNCTUATION}"), vec![LOWERCASE, UPPERCASE, DIGITS, PUNCTUATION]),
            (json!({ "PasswordLength": 4096 }), 4096, format!("{LOWERCASE}{UPPERCASE}{DIGITS}{PUNCTUATION}"), vec![]),
            (json!({ "PasswordLength": 8, "ExcludePunctuation": true, "ExcludeUppercase": true }), 8, format!("{LOWERCASE}{DIGITS}"), vec![LOWERCASE, DIGITS]),
            (json!({ "PasswordLength": 64, "ExcludeCharacters": format!("{LOWERCASE}{DIGITS}") }), 64, format!("{UPPERCASE}{PUNCTUATION}"), vec![UPPERCASE, PUNCTUATION]),
            (json!({ "PasswordLength": 4, "ExcludeLowercase": true, "ExcludeUppercase": true, "ExcludePunctuation": true }), 4, DIGITS.to_owned(), vec![DIGITS]),
            (json!({ "PasswordLength": 20, "IncludeSpace": true, "ExcludeLowercase": true, "ExcludeUppercase": true, "ExcludeNumbers": true, "ExcludePunctuation": true }), 20, " ".to_owned(), vec![" "]),
            (json!({ "PasswordLength": 3, "RequireEachIncludedType": false }), 3, format!("{LOWERCASE}{UPPERCASE}{DIGITS}{PUNCTUATION}"), vec![]),
        ];
        for (body, length, allowed, required) in rows {
            let got = ok(&s, "GetRandomPassword", body.clone());
            let password = text(&got["RandomPassword"]);
            assert_eq!(password.chars().count(), length, "{body}");
            assert!(
                password.chars().all(|c| allowed.contains(c)),
                "{body}: {password}"
            );
            for set in required {
                assert!(any(set, &password), "{body}: {password} lacks one of {set}");
            }
        }
        let random = "GetRandomPassword";
        let everything = format!("{LOWERCASE}{UPPERCASE}{DIGITS}{PUNCTUATION} ");
        #[rustfmt::skip]
        let rows = vec![
            // Four required types cannot fit in three characters.
            (random, json!({ "PasswordLength": 3 }), Fails(BAD_PARAM)),
            (random, json!({ "PasswordLength": 0 }), Fails(BAD_PARAM)),
            (random, json!({ "PasswordLength": 4097 }), Fails(BAD_PARAM)),
            (random, json!({ "ExcludeNumbers": "yes" }), Fails(BAD_PARAM)),
            (random, json!({ "ExcludeLowercase": true, "ExcludeUppercase": true, "ExcludeNumbers": true, "ExcludePunctuation": true }), Fails(BAD_PARAM)),
            (random, json!({ "ExcludeCharacters": everything, "IncludeSpace": true }), Fails(BAD_PARAM)),
        ];
        check(&s, rows);
    }

    #[test]
    fn unsupported_operations_are_named() {
        let s = store();
        for operation in [
            "UpdateSecretVersionStage",
            "CancelRotateSecret",
            "getSecretValue",
            "",
        ] {
            let refused = error(&s, operation, json!({ "SecretId": "app/db" }));
            let message =
                format!("operation {operation} is not supported by the keygate dev store");
            assert_eq!(refused, ServiceError::new(400, BAD_REQUEST, message));
        }
    }

    #[test]
    fn debug_shows_only_the_count() {
        assert_eq!(format!("{:?}", store()), "DevStore { secrets: 2, .. }");
    }

    /// Every operation, fed requests of the wrong shape, returns an error (or
    /// a success that ignores members it does not take) and never panics.
    #[test]
    fn malformed_requests_never_panic() {
        #[rustfmt::skip]
        let operations = [
            "GetSecretValue", "BatchGetSecretValue", "DescribeSecret", "ListSecrets",
            "ListSecretVersionIds", "CreateSecret", "PutSecretValue", "UpdateSecret",
            "DeleteSecret", "RestoreSecret", "TagResource", "UntagResource",
            "GetResourcePolicy", "PutResourcePolicy", "DeleteResourcePolicy",
            "RotateSecret", "GetRandomPassword",
        ];
        #[rustfmt::skip]
        let bodies = [
            json!([]),
            json!("SecretId"),
            json!(1),
            json!({ "SecretId": { "Name": "app/db" } }),
            json!({ "SecretId": ["app/db"], "Name": 5, "SecretIdList": [1], "Filters": "x" }),
            json!({ "SecretId": "app/db", "MaxResults": 1e300, "PasswordLength": -5 }),
            json!({ "SecretId": "app/db", "Name": "n", "Tags": [[]], "TagKeys": [5], "VersionStages": "AWSCURRENT" }),
            json!({ "SecretId": "app/db", "Name": "n", "SecretBinary": "%%", "ClientRequestToken": 9 }),
            json!({ "SecretId": "app/db", "Filters": [{ "Key": "name", "Values": [null] }], "RecoveryWindowInDays": u64::MAX }),
            json!({ "SecretId": "app/db", "ResourcePolicy": "{", "NextToken": "////", "ExcludeCharacters": 1 }),
        ];
        let expected = [BAD_PARAM, BAD_TOKEN, "MalformedPolicyDocumentException"];
        for operation in operations {
            for body in &bodies {
                match store().call(operation, body, at(T1)) {
                    Ok(_) => assert!(body.is_object(), "{operation} accepted {body}"),
                    Err(e) if operation == "RotateSecret" && e.error_type == BAD_REQUEST => {}
                    Err(e) => {
                        let kind = e.error_type.as_str();
                        assert!(expected.contains(&kind), "{operation} {body}: {e:?}");
                    }
                }
            }
        }
    }
}
