//! In-memory Vault / OpenBao *KV version 2* engine for one mount, used by the
//! embedded dev store of the quickstart.
//!
//! **Not for production:** everything lives in process memory, nothing is
//! encrypted at rest, and every secret is lost when keygate stops.
//!
//! keygate authenticates the client, then hands the request (method, the path
//! after the mount, raw query, parsed JSON body) to [`DevKv::call`] and relays
//! the returned status and body unchanged, so the bodies copy Vault's shapes
//! field for field: hvac, vaultrs and the `bao`/`vault` CLI parse them as if
//! they talked to a real server.
//!
//! Covered, with Vault's semantics:
//! - `data/<path>`: read (`?version=N`), write (`PUT`/`POST`, check-and-set
//!   through `options.cas`), JSON merge patch (`PATCH`), soft delete of the
//!   latest version (`DELETE`);
//! - `delete/`, `undelete/`, `destroy/<path>` with `{"versions": [..]}`;
//! - `metadata/<path>`: read, write, patch, delete, and `LIST` of a folder;
//! - `subkeys/<path>` and a read-only `config`.
//!
//! The engine keeps Vault's version window (10 versions unless
//! `max_versions` says otherwise), `cas_required`, `custom_metadata` and
//! `delete_version_after`. The mount configuration itself stays at Vault's
//! defaults: `POST config` is answered 405.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Versions kept per secret when its metadata sets no `max_versions` (Vault's default).
const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Vault stops descending into nested objects at this depth in `subkeys`.
const MAX_SUBKEYS_DEPTH: usize = 100;
/// Vault's limits on `custom_metadata`.
const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;
/// Longest duration Go's `time.Duration` can hold, so that Vault clients can
/// parse `delete_version_after` back.
const MAX_DURATION_SECS: u64 = 9_223_372_036;

/// In-memory KV v2 engine for one mount; see the module documentation.
pub struct DevKv {
    mount: String,
    secrets: Mutex<Store>,
}

/// A Vault HTTP answer: status and JSON body (None for 204 No Content).
#[derive(Debug, Clone, PartialEq)]
pub struct KvReply {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl DevKv {
    /// `mount` without slashes, e.g. "secret". `seeds`: (path inside the
    /// mount, e.g. "demo/db", data object) written as version 1 at `now`.
    ///
    /// A seed whose path would be rejected by [`DevKv::call`] (empty, `..`,
    /// empty segment, trailing slash) is skipped; the same path seeded twice
    /// gets a second version.
    pub fn new(mount: &str, seeds: &[(String, Map<String, Value>)], now: SystemTime) -> DevKv {
        let mut secrets = Store::new();
        for (path, data) in seeds {
            if let Ok(key) = secret_key(path) {
                secrets
                    .entry(key)
                    .or_default()
                    .add_version(data.clone(), now);
            }
        }
        DevKv {
            mount: mount.trim_matches('/').to_owned(),
            secrets: Mutex::new(secrets),
        }
    }

    /// The mount name, without slashes.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// Answers one Vault request for this mount.
    ///
    /// - `method`: "GET", "PUT", "POST", "PATCH", "DELETE" or "LIST" (keygate
    ///   turns GET ?list=true into LIST); any other answers 405.
    /// - `path`: the part AFTER the mount, e.g. "data/demo/db",
    ///   "metadata/demo/", "delete/demo/db", "undelete/demo/db",
    ///   "destroy/demo/db", "config", "subkeys/demo/db".
    /// - `query`: raw query string without '?', e.g. "version=2" (may be empty).
    /// - `body`: parsed JSON body if any.
    /// - `now`: the request time; it stamps new versions and deletions, and
    ///   decides whether a scheduled deletion has struck.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<&Value>,
        now: SystemTime,
    ) -> KvReply {
        let mut secrets = self.lock();
        let request = Request { query, body, now };
        dispatch(&mut secrets, method, path, &request).unwrap_or_else(|reply| reply)
    }

    /// Nothing here panics while holding the lock, so poisoning cannot
    /// happen; should it ever, serving the store beats failing every
    /// later request of a dev server.
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Written by hand so that secret values can never reach a log line.
impl fmt::Debug for DevKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKv")
            .field("mount", &self.mount)
            .field("secrets", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// Secrets by their path inside the mount; sorted so that LIST is a range scan.
type Store = BTreeMap<String, Secret>;

/// A handler's outcome: `Err` carries an error reply so handlers can use `?`.
type Outcome = Result<KvReply, KvReply>;

/// The parts of a call every handler may need.
struct Request<'a> {
    query: &'a str,
    body: Option<&'a Value>,
    now: SystemTime,
}

/// One secret: its key metadata and the versions still kept.
#[derive(Default)]
struct Secret {
    current_version: u64,
    oldest_version: u64,
    created_time: Option<SystemTime>,
    updated_time: Option<SystemTime>,
    max_versions: u32,
    cas_required: bool,
    /// Zero means versions are never deleted automatically.
    delete_version_after: Duration,
    custom_metadata: BTreeMap<String, String>,
    versions: BTreeMap<u64, Version>,
}

struct Version {
    created_time: SystemTime,
    deletion_time: Option<SystemTime>,
    destroyed: bool,
    /// Emptied when the version is destroyed.
    data: Map<String, Value>,
}

impl Version {
    /// A deletion time in the past (or now) hides the version; one in the
    /// future comes from `delete_version_after` and has not struck yet.
    fn is_deleted(&self, now: SystemTime) -> bool {
        self.deletion_time.is_some_and(|at| at <= now)
    }

    fn is_live(&self, now: SystemTime) -> bool {
        !self.destroyed && !self.is_deleted(now)
    }
}

impl Secret {
    /// A secret created by a metadata write: it has no version yet.
    fn without_versions(now: SystemTime) -> Secret {
        Secret {
            created_time: Some(now),
            updated_time: Some(now),
            ..Secret::default()
        }
    }

    /// Stores `data` as the next version and answers its metadata.
    fn add_version(&mut self, data: Map<String, Value>, now: SystemTime) -> Value {
        self.current_version = self.current_version.saturating_add(1);
        let version = Version {
            created_time: now,
            deletion_time: self.scheduled_deletion(now),
            destroyed: false,
            data,
        };
        let metadata = self.version_metadata(self.current_version, &version);
        self.versions.insert(self.current_version, version);
        self.updated_time = Some(now);
        self.created_time.get_or_insert(now);
        self.trim_versions();
        metadata
    }

    /// Slides the window of kept versions exactly as Vault does, including
    /// its `oldest_version` bookkeeping (0 until the first version drops out).
    fn trim_versions(&mut self) {
        let max = match self.max_versions {
            0 => DEFAULT_MAX_VERSIONS,
            n => u64::from(n),
        };
        if self.current_version.saturating_sub(self.oldest_version) >= max {
            let first_kept = self.current_version.saturating_sub(max) + 1;
            self.versions = self.versions.split_off(&first_kept);
            self.oldest_version = first_kept;
        }
    }

    /// When a version written or restored at `now` deletes itself.
    fn scheduled_deletion(&self, now: SystemTime) -> Option<SystemTime> {
        if self.delete_version_after.is_zero() {
            return None;
        }
        now.checked_add(self.delete_version_after)
    }

    fn soft_delete(&mut self, number: u64, now: SystemTime) {
        if let Some(version) = self.versions.get_mut(&number) {
            if version.is_live(now) {
                version.deletion_time = Some(now);
            }
        }
    }

    fn undelete(&mut self, number: u64, now: SystemTime) {
        let deletion_time = self.scheduled_deletion(now);
        if let Some(version) = self.versions.get_mut(&number) {
            if !version.destroyed {
                version.deletion_time = deletion_time;
            }
        }
    }

    fn destroy(&mut self, number: u64) {
        if let Some(version) = self.versions.get_mut(&number) {
            version.destroyed = true;
            version.data = Map::new();
        }
    }

    /// Vault stores metadata as protobuf, where an empty map reads back as
    /// null; clients see `null` until a key is set.
    fn custom_metadata_json(&self) -> Value {
        if self.custom_metadata.is_empty() {
            Value::Null
        } else {
            json!(self.custom_metadata)
        }
    }

    fn version_metadata(&self, number: u64, version: &Version) -> Value {
        json!({
            "created_time": timestamp(version.created_time),
            "custom_metadata": self.custom_metadata_json(),
            "deletion_time": optional_timestamp(version.deletion_time),
            "destroyed": version.destroyed,
            "version": number,
        })
    }

    fn key_metadata(&self) -> Value {
        let versions: Map<String, Value> = self
            .versions
            .iter()
            .map(|(number, version)| {
                let summary = json!({
                    "created_time": timestamp(version.created_time),
                    "deletion_time": optional_timestamp(version.deletion_time),
                    "destroyed": version.destroyed,
                });
                (number.to_string(), summary)
            })
            .collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": optional_timestamp(self.created_time),
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata_json(),
            "delete_version_after": go_duration(self.delete_version_after),
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": optional_timestamp(self.updated_time),
            "versions": versions,
        })
    }
}

// ---------------------------------------------------------------- routing

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    /// Vault treats PUT and POST alike (create or update).
    Write,
    Patch,
    Delete,
    List,
}

impl Method {
    fn parse(method: &str) -> Option<Method> {
        match method.to_ascii_uppercase().as_str() {
            "GET" => Some(Method::Get),
            "PUT" | "POST" => Some(Method::Write),
            "PATCH" => Some(Method::Patch),
            "DELETE" => Some(Method::Delete),
            "LIST" => Some(Method::List),
            _ => None,
        }
    }
}

/// What `delete/`, `undelete/` and `destroy/` do to each listed version.
#[derive(Clone, Copy)]
enum VersionAction {
    Delete,
    Undelete,
    Destroy,
}

fn dispatch(store: &mut Store, method: &str, path: &str, request: &Request) -> Outcome {
    let method = Method::parse(method).ok_or_else(unsupported_operation)?;
    let path = path.trim_start_matches('/');
    let (endpoint, rest) = path.split_once('/').unwrap_or((path, ""));
    match endpoint {
        "config" if rest.is_empty() => config(method),
        "data" => data(store, method, rest, request),
        "metadata" => metadata(store, method, rest, request),
        "subkeys" => subkeys(store, method, rest, request),
        "delete" => versions(store, method, rest, request, VersionAction::Delete),
        "undelete" => versions(store, method, rest, request, VersionAction::Undelete),
        "destroy" => versions(store, method, rest, request, VersionAction::Destroy),
        _ => Err(error(404, "unsupported path")),
    }
}

fn config(method: Method) -> Outcome {
    match method {
        Method::Get => Ok(ok(json!({
            "cas_required": false,
            "delete_version_after": "0s",
            "max_versions": 0,
        }))),
        _ => Err(unsupported_operation()),
    }
}

fn data(store: &mut Store, method: Method, raw: &str, request: &Request) -> Outcome {
    match method {
        Method::Get => read_version(store, &secret_key(raw)?, request, "data", |data| {
            Value::Object(data.clone())
        }),
        Method::Write => write_data(store, secret_key(raw)?, request),
        Method::Patch => patch_data(store, &secret_key(raw)?, request),
        Method::Delete => delete_latest(store, &secret_key(raw)?, request.now),
        Method::List => Err(unsupported_operation()),
    }
}

fn metadata(store: &mut Store, method: Method, raw: &str, request: &Request) -> Outcome {
    match method {
        Method::List => list(store, raw),
        Method::Get => read_metadata(store, &secret_key(raw)?),
        Method::Write => write_metadata(store, secret_key(raw)?, request),
        Method::Patch => patch_metadata(store, &secret_key(raw)?, request),
        Method::Delete => {
            store.remove(&secret_key(raw)?);
            Ok(no_content())
        }
    }
}

fn subkeys(store: &Store, method: Method, raw: &str, request: &Request) -> Outcome {
    match method {
        Method::Get => read_version(store, &secret_key(raw)?, request, "subkeys", |data| {
            subkeys_of(data, 1)
        }),
        _ => Err(unsupported_operation()),
    }
}

/// A secret's path: non-empty, no empty, `.` or `..` segment, and so no
/// leading or trailing slash either.
fn secret_key(raw: &str) -> Result<String, KvReply> {
    if raw.is_empty() {
        return Err(bad_request("missing path"));
    }
    if raw
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(bad_request("invalid path"));
    }
    Ok(raw.to_owned())
}

/// A folder to list, as the prefix its secrets start with ("" for the root).
/// Vault's HTTP layer appends the trailing slash itself, so it is optional.
fn folder_prefix(raw: &str) -> Result<String, KvReply> {
    let folder = raw.strip_suffix('/').unwrap_or(raw);
    if folder.is_empty() {
        return Ok(String::new());
    }
    Ok(secret_key(folder)? + "/")
}

// ---------------------------------------------------------------- data

/// Reads one version (the latest unless `?version=N`) and answers its
/// metadata with `render(data)` under `field`; a deleted or destroyed version
/// answers 404 with the metadata and a null `field`, as Vault does.
fn read_version(
    store: &Store,
    key: &str,
    request: &Request,
    field: &str,
    render: impl Fn(&Map<String, Value>) -> Value,
) -> Outcome {
    let wanted = version_param(request.query)?;
    let secret = store.get(key).ok_or_else(not_found)?;
    let number = if wanted > 0 {
        wanted
    } else {
        secret.current_version
    };
    let version = secret.versions.get(&number).ok_or_else(not_found)?;
    let mut answer = Map::new();
    answer.insert(
        "metadata".to_owned(),
        secret.version_metadata(number, version),
    );
    if !version.is_live(request.now) {
        answer.insert(field.to_owned(), Value::Null);
        return Err(reply(404, envelope(Value::Object(answer))));
    }
    answer.insert(field.to_owned(), render(&version.data));
    Ok(ok(Value::Object(answer)))
}

fn write_data(store: &mut Store, key: String, request: &Request) -> Outcome {
    let data = body_data(request.body)?;
    check_cas(request.body, store.get(&key))?;
    let metadata = store.entry(key).or_default().add_version(data, request.now);
    Ok(ok(metadata))
}

fn patch_data(store: &mut Store, key: &str, request: &Request) -> Outcome {
    let patch = body_data(request.body)?;
    let secret = store.get_mut(key).ok_or_else(not_found)?;
    check_cas(request.body, Some(secret))?;
    let current = secret.current_version;
    let version = secret.versions.get(&current).ok_or_else(not_found)?;
    if !version.is_live(request.now) {
        // Vault answers a patch of a deleted secret with the bare version metadata.
        let metadata = secret.version_metadata(current, version);
        return Err(reply(404, envelope(metadata)));
    }
    let mut data = version.data.clone();
    merge_patch(&mut data, &patch);
    Ok(ok(secret.add_version(data, request.now)))
}

/// JSON merge patch (RFC 7396): null removes a key, objects merge
/// recursively, anything else replaces.
fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(inner) = slot {
                    merge_patch(inner, inner_patch);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

fn delete_latest(store: &mut Store, key: &str, now: SystemTime) -> Outcome {
    // Vault answers 204 whether or not there was anything to delete.
    if let Some(secret) = store.get_mut(key) {
        let current = secret.current_version;
        secret.soft_delete(current, now);
    }
    Ok(no_content())
}

fn versions(
    store: &mut Store,
    method: Method,
    raw: &str,
    request: &Request,
    action: VersionAction,
) -> Outcome {
    if method != Method::Write {
        return Err(unsupported_operation());
    }
    let key = secret_key(raw)?;
    let numbers = body_versions(request.body)?;
    if let Some(secret) = store.get_mut(&key) {
        for number in numbers {
            match action {
                VersionAction::Delete => secret.soft_delete(number, request.now),
                VersionAction::Undelete => secret.undelete(number, request.now),
                VersionAction::Destroy => secret.destroy(number),
            }
        }
    }
    Ok(no_content())
}

/// `subkeys`: the data's shape with every leaf (and empty object) as null.
fn subkeys_of(data: &Map<String, Value>, depth: usize) -> Value {
    data.iter()
        .map(|(key, value)| {
            let shape = match value {
                Value::Object(inner) if !inner.is_empty() && depth < MAX_SUBKEYS_DEPTH => {
                    subkeys_of(inner, depth + 1)
                }
                _ => Value::Null,
            };
            (key.clone(), shape)
        })
        .collect::<Map<String, Value>>()
        .into()
}

// ---------------------------------------------------------------- metadata

fn read_metadata(store: &Store, key: &str) -> Outcome {
    let secret = store.get(key).ok_or_else(not_found)?;
    Ok(ok(secret.key_metadata()))
}

fn write_metadata(store: &mut Store, key: String, request: &Request) -> Outcome {
    let update = MetadataUpdate::parse(request.body)?;
    // Like Vault, a write that sets nothing does not create the metadata.
    if update.is_empty() {
        return Ok(no_content());
    }
    let custom = update.custom_metadata(None)?;
    let secret = store
        .entry(key)
        .or_insert_with(|| Secret::without_versions(request.now));
    update.apply(secret, custom);
    Ok(no_content())
}

fn patch_metadata(store: &mut Store, key: &str, request: &Request) -> Outcome {
    let update = MetadataUpdate::parse(request.body)?;
    let secret = store.get_mut(key).ok_or_else(not_found)?;
    let custom = update.custom_metadata(Some(&secret.custom_metadata))?;
    update.apply(secret, custom);
    Ok(no_content())
}

fn list(store: &Store, raw: &str) -> Outcome {
    let prefix = folder_prefix(raw)?;
    let keys: BTreeSet<String> = store
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .map_while(|(key, _)| key.strip_prefix(prefix.as_str()))
        .map(|below| match below.split_once('/') {
            Some((folder, _)) => format!("{folder}/"),
            None => below.to_owned(),
        })
        .collect();
    if keys.is_empty() {
        return Err(not_found());
    }
    Ok(ok(json!({ "keys": keys })))
}

/// The settings a metadata write or patch carries; absent ones stay as they are.
struct MetadataUpdate {
    max_versions: Option<u32>,
    cas_required: Option<bool>,
    delete_version_after: Option<Duration>,
    /// `None` values are JSON nulls, which a patch uses to remove a key.
    custom_metadata: Option<BTreeMap<String, Option<String>>>,
}

impl MetadataUpdate {
    fn parse(body: Option<&Value>) -> Result<MetadataUpdate, KvReply> {
        let fields = body_fields(body)?;
        let max_versions = field(fields, "max_versions")
            .map(|value| {
                weak_int(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| invalid_field("max_versions"))
            })
            .transpose()?;
        let cas_required = field(fields, "cas_required")
            .map(|value| weak_bool(value).ok_or_else(|| invalid_field("cas_required")))
            .transpose()?;
        let delete_version_after = field(fields, "delete_version_after")
            .map(|value| duration(value).ok_or_else(|| invalid_field("delete_version_after")))
            .transpose()?;
        let custom_metadata = field(fields, "custom_metadata")
            .map(custom_metadata_values)
            .transpose()?;
        Ok(MetadataUpdate {
            max_versions,
            cas_required,
            delete_version_after,
            custom_metadata,
        })
    }

    fn is_empty(&self) -> bool {
        self.max_versions.is_none()
            && self.cas_required.is_none()
            && self.delete_version_after.is_none()
            && self.custom_metadata.is_none()
    }

    /// The validated `custom_metadata` to store, or `None` to keep the
    /// current one. A write (`merge_into` None) replaces the map; a patch
    /// merges into the current one, null removing a key.
    fn custom_metadata(
        &self,
        merge_into: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<BTreeMap<String, String>>, KvReply> {
        let Some(given) = &self.custom_metadata else {
            return Ok(None);
        };
        let mut result = merge_into.cloned().unwrap_or_default();
        for (key, value) in given {
            match value {
                Some(value) => {
                    result.insert(key.clone(), value.clone());
                }
                None if merge_into.is_some() => {
                    result.remove(key);
                }
                // A write has no way to remove a key: Vault decodes null to
                // "", which fails the length check below.
                None => {
                    result.insert(key.clone(), String::new());
                }
            }
        }
        validate_custom_metadata(&result)?;
        Ok(Some(result))
    }

    fn apply(&self, secret: &mut Secret, custom: Option<BTreeMap<String, String>>) {
        if let Some(max_versions) = self.max_versions {
            secret.max_versions = max_versions;
        }
        if let Some(cas_required) = self.cas_required {
            secret.cas_required = cas_required;
        }
        if let Some(after) = self.delete_version_after {
            secret.delete_version_after = after;
        }
        if let Some(custom) = custom {
            secret.custom_metadata = custom;
        }
    }
}

/// `custom_metadata` values are strings; Vault weakly decodes numbers and
/// booleans into strings too.
fn custom_metadata_values(value: &Value) -> Result<BTreeMap<String, Option<String>>, KvReply> {
    let Value::Object(map) = value else {
        return Err(invalid_field("custom_metadata"));
    };
    map.iter()
        .map(|(key, value)| {
            let text = match value {
                Value::Null => None,
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                Value::Bool(flag) => Some(if *flag { "1" } else { "0" }.to_owned()),
                Value::Array(_) | Value::Object(_) => {
                    return Err(bad_request(
                        "custom_metadata validation failed: values must be strings",
                    ))
                }
            };
            Ok((key.clone(), text))
        })
        .collect()
}

/// Vault's limits, with its messages; values never appear in them.
fn validate_custom_metadata(custom: &BTreeMap<String, String>) -> Result<(), KvReply> {
    const PREFIX: &str = "custom_metadata validation failed";
    if custom.len() > MAX_CUSTOM_METADATA_KEYS {
        return Err(bad_request(&format!(
            "{PREFIX}: payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys, provided {}",
            custom.len()
        )));
    }
    for (key, value) in custom {
        if key.is_empty() || key.len() > MAX_CUSTOM_METADATA_KEY_LEN {
            return Err(bad_request(&format!(
                "{PREFIX}: length of key {key:?} is {} \
                 but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                key.len()
            )));
        }
        if value.is_empty() || value.len() > MAX_CUSTOM_METADATA_VALUE_LEN {
            return Err(bad_request(&format!(
                "{PREFIX}: length of value for key {key:?} is {} \
                 but must be 0 < len(value) <= {MAX_CUSTOM_METADATA_VALUE_LEN}",
                value.len()
            )));
        }
        if key.chars().any(char::is_control) || value.chars().any(char::is_control) {
            return Err(bad_request(&format!(
                "{PREFIX}: key {key:?} or its value contains unprintable characters"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- input

/// The body's fields; no body (or a null one) has none.
fn body_fields(body: Option<&Value>) -> Result<Option<&Map<String, Value>>, KvReply> {
    match body {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(fields)) => Ok(Some(fields)),
        Some(_) => Err(bad_request("request body must be a JSON object")),
    }
}

/// One field of the body; null counts as absent.
fn field<'a>(fields: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a Value> {
    fields
        .and_then(|fields| fields.get(name))
        .filter(|value| !value.is_null())
}

/// The `data` object of a write or patch.
fn body_data(body: Option<&Value>) -> Result<Map<String, Value>, KvReply> {
    match field(body_fields(body)?, "data") {
        Some(Value::Object(data)) => Ok(data.clone()),
        _ => Err(bad_request("no data provided")),
    }
}

/// Vault's check-and-set: `options.cas` must equal the current version (0
/// for a secret that does not exist yet); it is mandatory when the secret's
/// metadata sets `cas_required`.
fn check_cas(body: Option<&Value>, secret: Option<&Secret>) -> Result<(), KvReply> {
    let current = secret.map_or(0, |secret| secret.current_version);
    let required = secret.is_some_and(|secret| secret.cas_required);
    let cas = match field(body_fields(body)?, "options") {
        None => None,
        Some(Value::Object(options)) => options.get("cas").filter(|cas| !cas.is_null()),
        Some(_) => return Err(invalid_field("options")),
    };
    match cas {
        Some(cas) => {
            let cas = weak_int(cas)
                .ok_or_else(|| bad_request("error parsing check-and-set parameter"))?;
            if u64::try_from(cas).ok() == Some(current) {
                Ok(())
            } else {
                Err(bad_request(
                    "check-and-set parameter did not match the current version",
                ))
            }
        }
        None if required => Err(bad_request(
            "check-and-set parameter required for this call",
        )),
        None => Ok(()),
    }
}

/// `versions` of delete/undelete/destroy: an array, one number, or a
/// comma-separated string, as Vault's comma-int-slice field accepts.
/// Numbers below 1 name no version and are dropped.
fn body_versions(body: Option<&Value>) -> Result<Vec<u64>, KvReply> {
    let items: Vec<Option<i64>> = match field(body_fields(body)?, "versions") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(weak_int).collect(),
        Some(Value::String(text)) => text
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| part.trim().parse().ok())
            .collect(),
        Some(other) => vec![weak_int(other)],
    };
    if items.is_empty() {
        return Err(bad_request("No version number provided"));
    }
    let numbers: Option<Vec<i64>> = items.into_iter().collect();
    let numbers = numbers.ok_or_else(|| invalid_field("versions"))?;
    Ok(numbers
        .into_iter()
        .filter_map(|number| u64::try_from(number).ok())
        .filter(|number| *number > 0)
        .collect())
}

/// `?version=N`; absent, empty, zero or negative all mean "the latest" (0).
fn version_param(query: &str) -> Result<u64, KvReply> {
    let raw = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| *name == "version")
        .map(|(_, value)| value);
    match raw {
        None | Some("") => Ok(0),
        Some(text) => text
            .parse::<i64>()
            .map(|number| u64::try_from(number).unwrap_or(0))
            .map_err(|_| invalid_field("version")),
    }
}

/// An integer the way Vault's weak decoding reads one: numbers (fractions
/// truncated), numeric strings and booleans. `None` when out of range.
fn weak_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.is_finite() && float.abs() < 9.0e18)
                .map(|float| float.trunc() as i64)
        }),
        Value::String(text) => text.parse().ok(),
        Value::Bool(flag) => Some(i64::from(*flag)),
        _ => None,
    }
}

/// A boolean the way Go's `strconv.ParseBool` and weak decoding read one.
fn weak_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::Number(number) => number.as_f64().map(|float| float != 0.0),
        Value::String(text) => match text.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A duration the way Vault's "duration in seconds" fields read one: a
/// number of seconds, "90", "3d", or Go syntax with whole h/m/s parts
/// ("1h30m"). Negative or over Go's range is `None`.
fn duration(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::String(text) => duration_seconds(text.trim())?,
        other => u64::try_from(weak_int(other)?).ok()?,
    };
    (seconds <= MAX_DURATION_SECS).then(|| Duration::from_secs(seconds))
}

fn duration_seconds(text: &str) -> Option<u64> {
    if text.is_empty() {
        return Some(0);
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    if let Some(days) = text.strip_suffix('d') {
        return days.parse::<u64>().ok()?.checked_mul(86_400);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let unit_start = rest.find(|c: char| !c.is_ascii_digit())?;
        let amount: u64 = rest.get(..unit_start)?.parse().ok()?;
        let unit_end = rest
            .get(unit_start..)?
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |offset| unit_start + offset);
        let scale = match rest.get(unit_start..unit_end)? {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
        total = total.checked_add(amount.checked_mul(scale)?)?;
        rest = rest.get(unit_end..)?;
    }
    Some(total)
}

// ---------------------------------------------------------------- output

/// Go's `time.Duration.String()` for whole seconds, as Vault prints it.
fn go_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// RFC 3339 in UTC with trailing zeros of the fraction dropped, which is
/// what Go's `RFC3339Nano` (and so Vault) prints. A time outside years
/// 0000-9999 cannot be written in RFC 3339 and prints as "".
fn timestamp(at: SystemTime) -> String {
    let nanos = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|nanos| -nanos),
    };
    nanos
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Vault prints a missing time as "".
fn optional_timestamp(at: Option<SystemTime>) -> String {
    at.map(timestamp).unwrap_or_default()
}

/// Vault's response envelope around `data`.
fn envelope(data: Value) -> Value {
    json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "mount_type": "kv",
    })
}

fn reply(status: u16, body: Value) -> KvReply {
    KvReply {
        status,
        body: Some(body),
    }
}

fn ok(data: Value) -> KvReply {
    reply(200, envelope(data))
}

fn no_content() -> KvReply {
    KvReply {
        status: 204,
        body: None,
    }
}

fn error(status: u16, message: &str) -> KvReply {
    reply(status, json!({ "errors": [message] }))
}

fn bad_request(message: &str) -> KvReply {
    error(400, message)
}

/// Names the field but never echoes its value, which may be a secret.
fn invalid_field(name: &str) -> KvReply {
    bad_request(&format!("invalid value for field {name:?}"))
}

/// Vault's answer for a secret or path with nothing behind it.
fn not_found() -> KvReply {
    reply(404, json!({ "errors": [] }))
}

fn unsupported_operation() -> KvReply {
    error(405, "unsupported operation")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24T02:03:04.123456789Z, the time every scenario starts at.
    const T0_SECS: u64 = 1_795_485_784;
    const T0_TEXT: &str = "2026-11-24T02:03:04.123456789Z";
    const SECRET: &str = "hunter2";

    /// `offset` seconds after T0.
    fn at(offset: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(T0_SECS + offset, 123_456_789)
    }

    fn seeded(seeds: &[(&str, Value)]) -> DevKv {
        let seeds: Vec<(String, Map<String, Value>)> = seeds
            .iter()
            .filter_map(|(path, data)| Some(((*path).to_owned(), data.as_object()?.clone())))
            .collect();
        DevKv::new("secret", &seeds, at(0))
    }

    fn demo() -> DevKv {
        seeded(&[("demo/db", json!({"user": "app", "password": SECRET}))])
    }

    /// One request of a scenario, written compactly so a scenario reads as a
    /// table: `("METHOD path?query@seconds-after-T0", body JSON or "",
    /// status, [(JSON pointer into the reply, expected value)])`. An
    /// expected value is JSON when it parses as JSON, else a plain string.
    type Step<'a> = (&'a str, &'a str, u16, &'a [(&'a str, &'a str)]);

    fn json_or_text(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }

    fn run(kv: &DevKv, steps: &[Step]) {
        for (index, (request, body, status, checks)) in steps.iter().enumerate() {
            let (request, offset) = request.split_once('@').unwrap_or((request, "0"));
            let offset: u64 = offset.parse().unwrap_or_default();
            let (method, target) = request.split_once(' ').unwrap_or((request, ""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let body = (!body.is_empty()).then(|| json_or_text(body));
            let reply = kv.call(method, path, query, body.as_ref(), at(offset));
            let context = format!("step {index} ({request}) -> {reply:?}");
            assert_eq!(reply.status, *status, "{context}");
            assert_eq!(reply.body.is_none(), *status == 204, "{context}");
            for (pointer, expected) in *checks {
                let actual = reply.body.as_ref().and_then(|body| body.pointer(pointer));
                assert_eq!(
                    actual,
                    Some(&json_or_text(expected)),
                    "{context}: {pointer}"
                );
            }
        }
    }

    const NOT_FOUND: &[(&str, &str)] = &[("", r#"{"errors": []}"#)];
    const UNSUPPORTED: &[(&str, &str)] = &[("", r#"{"errors": ["unsupported operation"]}"#)];
    const INVALID_PATH: &[(&str, &str)] = &[("", r#"{"errors": ["invalid path"]}"#)];
    const MISSING_PATH: &[(&str, &str)] = &[("", r#"{"errors": ["missing path"]}"#)];
    const NO_VERSIONS: &[(&str, &str)] = &[("/errors/0", "No version number provided")];
    const CAS_MISMATCH: &[(&str, &str)] = &[(
        "/errors/0",
        "check-and-set parameter did not match the current version",
    )];

    #[test]
    fn every_success_carries_the_full_vault_envelope() {
        let kv = demo();
        let expected_keys: BTreeSet<&str> = [
            "request_id",
            "lease_id",
            "renewable",
            "lease_duration",
            "data",
            "wrap_info",
            "warnings",
            "auth",
            "mount_type",
        ]
        .into();
        let requests = [
            ("GET", "data/demo/db", None),
            ("PUT", "data/demo/db", Some(json!({"data": {"a": 1}}))),
            ("PATCH", "data/demo/db", Some(json!({"data": {"b": 2}}))),
            ("GET", "metadata/demo/db", None),
            ("LIST", "metadata/", None),
            ("GET", "subkeys/demo/db", None),
            ("GET", "config", None),
        ];
        for (method, path, body) in requests {
            let reply = kv.call(method, path, "", body.as_ref(), at(0));
            assert_eq!(reply.status, 200, "{method} {path}");
            let body = reply.body.unwrap_or_default();
            let keys: BTreeSet<&str> = body
                .as_object()
                .map(|fields| fields.keys().map(String::as_str).collect())
                .unwrap_or_default();
            assert_eq!(keys, expected_keys, "{method} {path}");
            let request_id = body["request_id"].as_str().unwrap_or_default();
            assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{method} {path}");
            assert_eq!(body["lease_id"], "");
            assert_eq!(body["renewable"], false);
            assert_eq!(body["lease_duration"], 0);
            assert!(body["data"].is_object(), "{method} {path}");
            assert_eq!(body["wrap_info"], Value::Null);
            assert_eq!(body["warnings"], Value::Null);
            assert_eq!(body["auth"], Value::Null);
            assert_eq!(body["mount_type"], "kv");
        }
    }

    #[test]
    fn data_reads_and_writes_versions() {
        let first = r#"{"created_time": "2026-11-24T02:03:04.123456789Z",
            "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": 1}"#;
        let second = r#"{"created_time": "2026-11-24T02:03:09.123456789Z",
            "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": 2}"#;
        #[rustfmt::skip]
        run(&demo(), &[
            ("GET data/demo/db", "", 200, &[
                ("/data/data", r#"{"user": "app", "password": "hunter2"}"#),
                ("/data/metadata", first),
            ]),
            ("PUT data/demo/db@5", r#"{"data": {"password": "s3cret"}}"#, 200, &[("/data", second)]),
            ("GET data/demo/db", "", 200, &[
                ("/data/data", r#"{"password": "s3cret"}"#),
                ("/data/metadata", second),
            ]),
            ("GET data/demo/db?version=1", "", 200, &[("/data/data/password", SECRET)]),
            ("GET data/demo/db?version=0", "", 200, &[("/data/metadata/version", "2")]),
            ("GET data/demo/db?foo=bar&version=-3", "", 200, &[("/data/metadata/version", "2")]),
            ("GET data/demo/db?version=3", "", 404, NOT_FOUND),
            ("GET data/demo/db?version=abc", "", 400,
                &[("/errors/0", r#"invalid value for field "version""#)]),
            ("GET data/demo/db?version=99999999999999999999999", "", 400, &[]),
            ("GET data/missing", "", 404, NOT_FOUND),
            ("POST data/new", r#"{"data": {}}"#, 200, &[("/data/version", "1")]),
            ("GET data/new", "", 200, &[("/data/data", "{}")]),
        ]);
    }

    #[test]
    fn check_and_set() {
        #[rustfmt::skip]
        run(&demo(), &[
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": 0}}"#, 400, CAS_MISMATCH),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": 2}}"#, 400, CAS_MISMATCH),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": 1}}"#, 200, &[("/data/version", "2")]),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": "2"}}"#, 200, &[("/data/version", "3")]),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": "x"}}"#, 400,
                &[("/errors/0", "error parsing check-and-set parameter")]),
            ("PUT data/fresh", r#"{"data": {}, "options": {"cas": 0}}"#, 200, &[("/data/version", "1")]),
            ("PUT data/other", r#"{"data": {}, "options": {"cas": 1}}"#, 400, CAS_MISMATCH),
            // A refused write must not leave an empty secret behind.
            ("GET metadata/other", "", 404, NOT_FOUND),
            ("POST metadata/demo/db", r#"{"cas_required": true}"#, 204, &[]),
            ("PUT data/demo/db", r#"{"data": {}}"#, 400,
                &[("/errors/0", "check-and-set parameter required for this call")]),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": 3}}"#, 200, &[("/data/version", "4")]),
        ]);
    }

    #[test]
    fn writes_without_a_data_object_are_refused() {
        let no_data = &[("/errors/0", "no data provided")];
        let not_object = &[("/errors/0", "request body must be a JSON object")];
        #[rustfmt::skip]
        run(&demo(), &[
            ("PUT data/demo/db", "", 400, no_data),
            ("PUT data/demo/db", "{}", 400, no_data),
            ("PUT data/demo/db", r#"{"data": 5}"#, 400, no_data),
            ("POST data/demo/db", r#"{"data": null}"#, 400, no_data),
            ("POST data/demo/db", r#"{"data": [1]}"#, 400, no_data),
            ("PUT data/demo/db", r#""data""#, 400, not_object),
            ("PUT data/demo/db", r#"{"data": {}, "options": 3}"#, 400,
                &[("/errors/0", r#"invalid value for field "options""#)]),
            ("PATCH data/demo/db", "", 400, no_data),
            ("PATCH data/demo/db", r#"{"data": "x"}"#, 400, no_data),
            ("PATCH data/demo/db", "[]", 400, not_object),
            ("GET metadata/demo/db", "", 200, &[("/data/current_version", "1")]),
        ]);
    }

    #[test]
    fn patch_merges_into_the_latest_version() {
        let kv = seeded(&[(
            "demo/app",
            json!({"a": 1, "nested": {"x": 1, "y": 2}, "gone": true}),
        )]);
        #[rustfmt::skip]
        run(&kv, &[
            ("PATCH data/demo/app", r#"{"data": {"b": 2, "nested": {"y": null, "z": 3}, "gone": null}}"#,
                200, &[("/data/version", "2"), ("/data/deletion_time", "")]),
            ("GET data/demo/app", "", 200,
                &[("/data/data", r#"{"a": 1, "b": 2, "nested": {"x": 1, "z": 3}}"#)]),
            ("PATCH data/demo/app", r#"{"data": {"a": {"deep": null}}}"#, 200, &[]),
            ("GET data/demo/app", "", 200, &[("/data/data/a", "{}")]),
            ("PATCH data/demo/app", r#"{"data": {}, "options": {"cas": 1}}"#, 400, CAS_MISMATCH),
            ("PATCH data/demo/app", r#"{"data": {}, "options": {"cas": 3}}"#, 200,
                &[("/data/version", "4")]),
            ("PATCH data/missing", r#"{"data": {"a": 1}}"#, 404, NOT_FOUND),
            ("DELETE data/demo/app", "", 204, &[]),
            // Vault answers with the bare version metadata here.
            ("PATCH data/demo/app", r#"{"data": {"a": 1}}"#, 404, &[
                ("/data/version", "4"),
                ("/data/deletion_time", T0_TEXT),
            ]),
            ("POST metadata/only", r#"{"max_versions": 3}"#, 204, &[]),
            ("PATCH data/only", r#"{"data": {"a": 1}}"#, 404, NOT_FOUND),
        ]);
    }

    #[test]
    fn delete_undelete_and_destroy() {
        let kv = demo();
        let deleted_at = "2026-11-24T02:03:14.123456789Z";
        #[rustfmt::skip]
        run(&kv, &[
            ("PUT data/demo/db", r#"{"data": {"v": 2}}"#, 200, &[]),
            ("DELETE data/demo/db@10", "", 204, &[]),
            ("GET data/demo/db@10", "", 404, &[
                ("/data/data", "null"),
                ("/data/metadata/deletion_time", deleted_at),
                ("/data/metadata/version", "2"),
            ]),
            ("GET data/demo/db?version=1", "", 200, &[]),
            // Deleting again keeps the first deletion time.
            ("DELETE data/demo/db@20", "", 204, &[]),
            ("GET metadata/demo/db", "", 200, &[("/data/versions/2/deletion_time", deleted_at)]),
            ("POST undelete/demo/db", r#"{"versions": [2]}"#, 204, &[]),
            ("GET data/demo/db", "", 200,
                &[("/data/data", r#"{"v": 2}"#), ("/data/metadata/deletion_time", "")]),
            ("PUT delete/demo/db", r#"{"versions": "1, 2"}"#, 204, &[]),
            ("GET data/demo/db?version=1", "", 404, &[("/data/data", "null")]),
            ("GET data/demo/db", "", 404, &[]),
            ("POST undelete/demo/db", r#"{"versions": ["1"]}"#, 204, &[]),
            ("GET data/demo/db?version=1", "", 200, &[]),
            ("POST destroy/demo/db", r#"{"versions": [1, 7, -1]}"#, 204, &[]),
            ("GET data/demo/db?version=1", "", 404,
                &[("/data/data", "null"), ("/data/metadata/destroyed", "true")]),
            ("POST undelete/demo/db", r#"{"versions": [1]}"#, 204, &[]),
            ("GET data/demo/db?version=1", "", 404, &[]),
            ("GET metadata/demo/db", "", 200,
                &[("/data/versions/1/destroyed", "true"), ("/data/current_version", "2")]),
            ("POST delete/demo/db", "{}", 400, NO_VERSIONS),
            ("POST delete/demo/db", r#"{"versions": []}"#, 400, NO_VERSIONS),
            ("POST delete/demo/db", r#"{"versions": [{"a": 1}]}"#, 400,
                &[("/errors/0", r#"invalid value for field "versions""#)]),
            ("POST destroy/nothing", r#"{"versions": [1]}"#, 204, &[]),
            ("DELETE data/nothing", "", 204, &[]),
            ("GET delete/demo/db", "", 405, UNSUPPORTED),
        ]);
        let destroyed_data = kv.lock().get("demo/db").and_then(|secret| {
            secret
                .versions
                .get(&1)
                .map(|version| version.data.is_empty())
        });
        assert_eq!(destroyed_data, Some(true), "destroy must drop the data");
    }

    #[test]
    fn metadata_read_write_patch_delete() {
        let fresh = r#"{"cas_required": false, "created_time": "2026-11-24T02:03:04.123456789Z",
            "current_version": 1, "custom_metadata": null, "delete_version_after": "0s",
            "max_versions": 0, "oldest_version": 0, "updated_time": "2026-11-24T02:03:04.123456789Z",
            "versions": {"1": {"created_time": "2026-11-24T02:03:04.123456789Z",
                "deletion_time": "", "destroyed": false}}}"#;
        let custom = r#"{"n": "5", "team": "x"}"#;
        #[rustfmt::skip]
        run(&demo(), &[
            ("GET metadata/demo/db", "", 200, &[("/data", fresh)]),
            ("POST metadata/demo/db", r#"{"max_versions": 2, "custom_metadata": {"owner": "ops", "n": 5}}"#,
                204, &[]),
            ("GET data/demo/db", "", 200,
                &[("/data/metadata/custom_metadata", r#"{"n": "5", "owner": "ops"}"#)]),
            ("PUT data/demo/db@1", r#"{"data": {"v": 2}}"#, 200, &[]),
            ("PUT data/demo/db@2", r#"{"data": {"v": 3}}"#, 200, &[("/data/custom_metadata/owner", "ops")]),
            ("GET metadata/demo/db", "", 200, &[
                ("/data/oldest_version", "2"),
                ("/data/current_version", "3"),
                ("/data/max_versions", "2"),
                ("/data/created_time", T0_TEXT),
                ("/data/updated_time", "2026-11-24T02:03:06.123456789Z"),
                ("/data/versions/2/created_time", "2026-11-24T02:03:05.123456789Z"),
                ("/data/versions/3/created_time", "2026-11-24T02:03:06.123456789Z"),
            ]),
            ("GET data/demo/db?version=1", "", 404, NOT_FOUND),
            ("PATCH metadata/demo/db", r#"{"custom_metadata": {"owner": null, "team": "x"}}"#, 204, &[]),
            ("GET metadata/demo/db", "", 200,
                &[("/data/custom_metadata", custom), ("/data/max_versions", "2")]),
            ("PUT metadata/demo/db", r#"{"custom_metadata": {"k": ""}}"#, 400, &[]),
            ("PUT metadata/demo/db", r#"{"custom_metadata": {"k": null}}"#, 400, &[]),
            ("PUT metadata/demo/db", r#"{"custom_metadata": {"k": [1]}}"#, 400, &[]),
            ("PUT metadata/demo/db", r#"{"custom_metadata": "k"}"#, 400, &[]),
            ("PUT metadata/demo/db", r#"{"max_versions": -1}"#, 400,
                &[("/errors/0", r#"invalid value for field "max_versions""#)]),
            ("PUT metadata/demo/db", r#"{"max_versions": "x"}"#, 400, &[]),
            ("PUT metadata/demo/db", r#"{"cas_required": "maybe"}"#, 400, &[]),
            // Refused writes changed nothing.
            ("GET metadata/demo/db", "", 200,
                &[("/data/custom_metadata", custom), ("/data/cas_required", "false")]),
            ("PATCH metadata/missing", r#"{"max_versions": 1}"#, 404, NOT_FOUND),
            ("PUT metadata/only/meta@7", r#"{"cas_required": "true"}"#, 204, &[]),
            ("GET metadata/only/meta", "", 200, &[
                ("/data/current_version", "0"),
                ("/data/versions", "{}"),
                ("/data/created_time", "2026-11-24T02:03:11.123456789Z"),
                ("/data/cas_required", "true"),
            ]),
            ("GET data/only/meta", "", 404, NOT_FOUND),
            ("PUT metadata/empty", "{}", 204, &[]),
            ("GET metadata/empty", "", 404, NOT_FOUND),
            ("DELETE metadata/demo/db", "", 204, &[]),
            ("GET metadata/demo/db", "", 404, NOT_FOUND),
            ("GET data/demo/db", "", 404, NOT_FOUND),
            ("PUT data/demo/db", r#"{"data": {}, "options": {"cas": 0}}"#, 200, &[("/data/version", "1")]),
        ]);
    }

    #[test]
    fn only_the_last_ten_versions_are_kept_by_default() {
        let kv = demo();
        for version in 2..=11 {
            let body = json!({"data": {"v": version}});
            let reply = kv.call("PUT", "data/demo/db", "", Some(&body), at(0));
            assert_eq!(reply.status, 200);
        }
        #[rustfmt::skip]
        run(&kv, &[
            ("GET metadata/demo/db", "", 200,
                &[("/data/oldest_version", "2"), ("/data/current_version", "11")]),
            ("GET data/demo/db?version=1", "", 404, NOT_FOUND),
            ("GET data/demo/db?version=2", "", 200, &[("/data/data/v", "2")]),
        ]);
        let kept = kv.lock().get("demo/db").map(|secret| secret.versions.len());
        assert_eq!(kept, Some(10));
    }

    #[test]
    fn list_shows_direct_children_with_folders() {
        let data = json!({"k": "v"});
        let paths = ["a", "b/c", "b/d/e", "b-x", "bb", "x"];
        let seeds: Vec<(&str, Value)> = paths.iter().map(|path| (*path, data.clone())).collect();
        let root = &[("/data/keys", r#"["a", "b-x", "b/", "bb", "x"]"#)];
        let in_b = &[("/data/keys", r#"["c", "d/"]"#)];
        #[rustfmt::skip]
        run(&seeded(&seeds), &[
            ("LIST metadata/", "", 200, root),
            ("LIST metadata", "", 200, root),
            ("LIST metadata/b", "", 200, in_b),
            ("LIST metadata/b/", "", 200, in_b),
            ("LIST metadata/b/d", "", 200, &[("/data/keys", r#"["e"]"#)]),
            ("LIST metadata/nothing/", "", 404, NOT_FOUND),
            ("LIST metadata/a", "", 404, NOT_FOUND),
            ("LIST metadata/../x", "", 400, INVALID_PATH),
            ("LIST metadata/b//", "", 400, INVALID_PATH),
            // Deleted and destroyed secrets keep their metadata, so they stay listed.
            ("DELETE data/x", "", 204, &[]),
            ("POST destroy/a", r#"{"versions": [1]}"#, 204, &[]),
            ("LIST metadata/", "", 200, root),
            ("DELETE metadata/b/d/e", "", 204, &[]),
            ("LIST metadata/b", "", 200, &[("/data/keys", r#"["c"]"#)]),
            ("LIST data/b", "", 405, UNSUPPORTED),
        ]);
    }

    #[test]
    fn subkeys_hide_values() {
        let kv = seeded(&[(
            "app",
            json!({"a": 1, "b": {"c": SECRET, "d": {}}, "e": [1, 2]}),
        )]);
        #[rustfmt::skip]
        run(&kv, &[
            ("GET subkeys/app", "", 200, &[
                ("/data/subkeys", r#"{"a": null, "b": {"c": null, "d": null}, "e": null}"#),
                ("/data/metadata/version", "1"),
            ]),
            ("GET subkeys/app?version=2", "", 404, NOT_FOUND),
            ("DELETE data/app", "", 204, &[]),
            ("GET subkeys/app", "", 404,
                &[("/data/subkeys", "null"), ("/data/metadata/version", "1")]),
            ("PUT subkeys/app", "{}", 405, UNSUPPORTED),
        ]);
    }

    #[test]
    fn paths_methods_and_config() {
        let config = r#"{"cas_required": false, "delete_version_after": "0s", "max_versions": 0}"#;
        let unsupported_path = &[("", r#"{"errors": ["unsupported path"]}"#)];
        #[rustfmt::skip]
        run(&demo(), &[
            ("GET data/../demo/db", "", 400, INVALID_PATH),
            ("PUT data/demo/../x", r#"{"data": {}}"#, 400, INVALID_PATH),
            ("GET data/./demo", "", 400, INVALID_PATH),
            ("GET data/demo//db", "", 400, INVALID_PATH),
            ("GET data/demo/db/", "", 400, INVALID_PATH),
            ("DELETE metadata/demo/", "", 400, INVALID_PATH),
            ("GET data/", "", 400, MISSING_PATH),
            ("GET data", "", 400, MISSING_PATH),
            ("GET metadata/", "", 400, MISSING_PATH),
            ("POST delete/", r#"{"versions": [1]}"#, 400, MISSING_PATH),
            ("GET /data/demo/db", "", 200, &[]),
            ("get data/demo/db", "", 200, &[]),
            ("HEAD data/demo/db", "", 405, UNSUPPORTED),
            ("GET nope/demo", "", 404, unsupported_path),
            ("GET config/extra", "", 404, unsupported_path),
            ("GET", "", 404, unsupported_path),
            ("POST config", r#"{"max_versions": 1}"#, 405, UNSUPPORTED),
            ("GET config", "", 200, &[("/data", config)]),
        ]);
    }

    #[test]
    fn delete_version_after_schedules_deletion() {
        let hour_later = "2026-11-24T03:03:04.123456789Z";
        #[rustfmt::skip]
        run(&demo(), &[
            ("POST metadata/demo/db", r#"{"delete_version_after": "1h"}"#, 204, &[]),
            ("GET metadata/demo/db", "", 200, &[("/data/delete_version_after", "1h0m0s")]),
            ("PUT data/demo/db", r#"{"data": {"v": 2}}"#, 200, &[("/data/deletion_time", hour_later)]),
            ("GET data/demo/db@3599", "", 200, &[("/data/data/v", "2")]),
            ("GET data/demo/db@3600", "", 404, &[("/data/metadata/deletion_time", hour_later)]),
            // Undeleting restarts the clock.
            ("POST undelete/demo/db@4000", r#"{"versions": [2]}"#, 204, &[]),
            ("GET data/demo/db@4000", "", 200,
                &[("/data/metadata/deletion_time", "2026-11-24T04:09:44.123456789Z")]),
            ("PUT metadata/demo/db", r#"{"delete_version_after": -5}"#, 400,
                &[("/errors/0", r#"invalid value for field "delete_version_after""#)]),
        ]);
    }

    #[test]
    fn durations_parse_and_print_like_go() {
        let cases = [
            (json!(90), Some("1m30s")),
            (json!("90"), Some("1m30s")),
            (json!("3d"), Some("72h0m0s")),
            (json!("1h30m"), Some("1h30m0s")),
            (json!("45s"), Some("45s")),
            (json!(""), Some("0s")),
            (json!(0), Some("0s")),
            (json!(true), Some("1s")),
            (json!("-5"), None),
            (json!(-5), None),
            (json!("1x"), None),
            (json!("h"), None),
            (json!("1.5h"), None),
            (json!("99999999999999999999s"), None),
            (json!(1e300), None),
            (json!([1]), None),
        ];
        for (input, expected) in cases {
            let printed = duration(&input).map(go_duration);
            assert_eq!(printed.as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn timestamps_print_like_go_rfc3339nano() {
        let epoch = SystemTime::UNIX_EPOCH;
        let cases = [
            (at(0), T0_TEXT),
            (epoch, "1970-01-01T00:00:00Z"),
            (
                epoch + Duration::from_millis(120),
                "1970-01-01T00:00:00.12Z",
            ),
            (
                epoch - Duration::from_nanos(1),
                "1969-12-31T23:59:59.999999999Z",
            ),
            (epoch + Duration::from_secs(400_000_000_000), ""),
        ];
        for (time, expected) in cases {
            assert_eq!(timestamp(time), expected);
        }
    }

    #[test]
    fn debug_shows_no_secret_values() {
        let kv = demo();
        assert_eq!(
            format!("{kv:?}"),
            r#"DevKv { mount: "secret", secrets: 1, .. }"#
        );
        assert_eq!(kv.mount(), "secret");
        assert_eq!(DevKv::new("/kv/", &[], at(0)).mount(), "kv");
    }

    #[test]
    fn bad_seeds_are_skipped() {
        let data = json!({"a": 1});
        let kv = seeded(&[("../x", data.clone()), ("", data.clone()), ("ok", data)]);
        assert_eq!(
            format!("{kv:?}"),
            r#"DevKv { mount: "secret", secrets: 1, .. }"#
        );
    }

    #[test]
    fn garbage_never_panics_nor_leaks_values_into_errors() {
        let kv = demo();
        let methods = ["GET", "PUT", "POST", "PATCH", "DELETE", "LIST", "HEAD", ""];
        let paths = [
            "",
            "/",
            "data",
            "data/",
            "data/demo/db",
            "data/..",
            "metadata",
            "metadata/",
            "metadata/demo/",
            "metadata/demo/db",
            "delete/demo/db",
            "undelete/demo/db",
            "destroy/demo/db",
            "subkeys/demo/db",
            "config",
            "config/x",
            "x/y",
            "data/é/ü",
            "data/a\u{0}b",
        ];
        let bodies = [
            None,
            Some(Value::Null),
            Some(json!(1)),
            Some(json!(SECRET)),
            Some(json!({"data": SECRET})),
            Some(json!({"data": {"k": SECRET}, "options": {"cas": SECRET}})),
            Some(json!({"data": {"k": SECRET}, "options": {"cas": 1e300}})),
            Some(json!({"versions": SECRET})),
            Some(json!({"versions": [u64::MAX, -1, 1.5, SECRET]})),
            Some(json!({"max_versions": 1e300, "delete_version_after": SECRET})),
            Some(json!({"custom_metadata": {"k": {"x": SECRET}}})),
            Some(json!({"custom_metadata": {"k": SECRET.repeat(100)}})),
        ];
        let queries = [
            "",
            "version=abc",
            "version=99999999999999999999",
            "version",
            "=&&=",
            "version=2&version=x",
        ];
        for method in methods {
            for path in paths {
                for body in &bodies {
                    for query in queries {
                        let reply = kv.call(method, path, query, body.as_ref(), at(0));
                        assert!([200, 204, 400, 404, 405].contains(&reply.status));
                        let body = reply.body.unwrap_or_default();
                        if body.get("errors").is_some() {
                            let shown = body.to_string();
                            assert!(!shown.contains(SECRET), "{method} {path}: {shown}");
                        }
                    }
                }
            }
        }
    }
}
