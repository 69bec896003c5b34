//! Placeholder: replaced by the dev KV v2 engine.
pub struct DevKv {
    mount: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct KvReply {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}
impl DevKv {
    pub fn new(
        mount: &str,
        _seeds: &[(String, serde_json::Map<String, serde_json::Value>)],
        _now: std::time::SystemTime,
    ) -> DevKv {
        DevKv {
            mount: mount.to_string(),
        }
    }
    pub fn mount(&self) -> &str {
        &self.mount
    }
    pub fn call(
        &self,
        _m: &str,
        _p: &str,
        _q: &str,
        _b: Option<&serde_json::Value>,
        _now: std::time::SystemTime,
    ) -> KvReply {
        KvReply {
            status: 404,
            body: Some(serde_json::json!({"errors": []})),
        }
    }
}
