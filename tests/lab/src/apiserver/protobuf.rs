//! Decoding of the Kubernetes protobuf envelope for the few kinds kubectl's imperative
//! generators send as protobuf (`kubectl create namespace|configmap|secret|serviceaccount|
//! service|deployment ...`). Only the fields those generators set are mapped; unknown fields are skipped.
//! Zero values (empty strings, 0, false, empty messages) are omitted, like `omitempty`.

use serde_json::{Map, Value, json};

/// The 4-byte prefix of Kubernetes protobuf bodies.
pub const MAGIC: &[u8] = b"k8s\0";

/// Error decoding a protobuf body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProtobufError(pub String);

#[derive(Debug, Clone, Copy)]
enum Field {
    Str,
    Int,
    /// An optional int32 (a pointer in Go): present even when 0 (`replicas: 0`).
    OptInt,
    Bool,
    Msg(&'static [(u32, &'static str, Field)]),
    RepeatedStr,
    RepeatedMsg(&'static [(u32, &'static str, Field)]),
    MapStrStr,
    MapStrBytes,
    IntOrString,
}

type Schema = &'static [(u32, &'static str, Field)];

const OBJECT_META: Schema = &[
    (1, "name", Field::Str),
    (2, "generateName", Field::Str),
    (3, "namespace", Field::Str),
    (11, "labels", Field::MapStrStr),
    (12, "annotations", Field::MapStrStr),
    (14, "finalizers", Field::RepeatedStr),
];

const NAMESPACE: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Field::Msg(&[(1, "finalizers", Field::RepeatedStr)]),
    ),
];

const CONFIG_MAP: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "data", Field::MapStrStr),
    (3, "binaryData", Field::MapStrBytes),
    (4, "immutable", Field::Bool),
];

const SECRET: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "data", Field::MapStrBytes),
    (3, "type", Field::Str),
    (4, "stringData", Field::MapStrStr),
    (5, "immutable", Field::Bool),
];

const SERVICE_ACCOUNT: Schema = &[(1, "metadata", Field::Msg(OBJECT_META))];

const SERVICE_PORT: Schema = &[
    (1, "name", Field::Str),
    (2, "protocol", Field::Str),
    (3, "port", Field::Int),
    (4, "targetPort", Field::IntOrString),
    (5, "nodePort", Field::Int),
    (6, "appProtocol", Field::Str),
];

const SERVICE_SPEC: Schema = &[
    (1, "ports", Field::RepeatedMsg(SERVICE_PORT)),
    (2, "selector", Field::MapStrStr),
    (3, "clusterIP", Field::Str),
    (4, "type", Field::Str),
    (5, "externalIPs", Field::RepeatedStr),
    (7, "sessionAffinity", Field::Str),
    (10, "externalName", Field::Str),
    (18, "clusterIPs", Field::RepeatedStr),
];

const SERVICE: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "spec", Field::Msg(SERVICE_SPEC)),
];

const LABEL_SELECTOR: Schema = &[
    (1, "matchLabels", Field::MapStrStr),
    (
        2,
        "matchExpressions",
        Field::RepeatedMsg(&[
            (1, "key", Field::Str),
            (2, "operator", Field::Str),
            (3, "values", Field::RepeatedStr),
        ]),
    ),
];

const CONTAINER_PORT: Schema = &[
    (1, "name", Field::Str),
    (2, "hostPort", Field::Int),
    (3, "containerPort", Field::Int),
    (4, "protocol", Field::Str),
    (5, "hostIP", Field::Str),
];

const CONTAINER: Schema = &[
    (1, "name", Field::Str),
    (2, "image", Field::Str),
    (3, "command", Field::RepeatedStr),
    (4, "args", Field::RepeatedStr),
    (5, "workingDir", Field::Str),
    (6, "ports", Field::RepeatedMsg(CONTAINER_PORT)),
    (
        7,
        "env",
        Field::RepeatedMsg(&[(1, "name", Field::Str), (2, "value", Field::Str)]),
    ),
    (14, "imagePullPolicy", Field::Str),
];

const POD_SPEC: Schema = &[
    (2, "containers", Field::RepeatedMsg(CONTAINER)),
    (3, "restartPolicy", Field::Str),
    (4, "terminationGracePeriodSeconds", Field::OptInt),
    (7, "nodeSelector", Field::MapStrStr),
    (8, "serviceAccountName", Field::Str),
    (10, "nodeName", Field::Str),
    (11, "hostNetwork", Field::Bool),
];

const DEPLOYMENT_SPEC: Schema = &[
    (1, "replicas", Field::OptInt),
    (2, "selector", Field::Msg(LABEL_SELECTOR)),
    (
        3,
        "template",
        Field::Msg(&[
            (1, "metadata", Field::Msg(OBJECT_META)),
            (2, "spec", Field::Msg(POD_SPEC)),
        ]),
    ),
    (
        4,
        "strategy",
        Field::Msg(&[
            (1, "type", Field::Str),
            (
                2,
                "rollingUpdate",
                Field::Msg(&[
                    (1, "maxUnavailable", Field::IntOrString),
                    (2, "maxSurge", Field::IntOrString),
                ]),
            ),
        ]),
    ),
    (5, "minReadySeconds", Field::Int),
    (6, "revisionHistoryLimit", Field::OptInt),
    (7, "paused", Field::Bool),
    (9, "progressDeadlineSeconds", Field::OptInt),
];

const DEPLOYMENT: Schema = &[
    (1, "metadata", Field::Msg(OBJECT_META)),
    (2, "spec", Field::Msg(DEPLOYMENT_SPEC)),
];

/// A decoded field value: `Ok(varint)` or `Err(bytes)` for length-delimited fields.
type WireValue<'a> = Result<u64, &'a [u8]>;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| ProtobufError("truncated varint".into()))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtobufError("varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtobufError> {
        let len =
            usize::try_from(self.varint()?).map_err(|_| ProtobufError("length overflow".into()))?;
        if len > self.buf.len() {
            return Err(ProtobufError("truncated length-delimited field".into()));
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    /// Next (field number, value); value is `Ok(varint)` or `Err(bytes)` (length-delimited).
    fn next(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field =
            u32::try_from(key >> 3).map_err(|_| ProtobufError("field number overflow".into()))?;
        let value = match key & 7 {
            0 => Ok(self.varint()?),
            2 => Err(self.bytes()?),
            1 => {
                self.skip(8)?;
                return self.next();
            }
            5 => {
                self.skip(4)?;
                return self.next();
            }
            w => return Err(ProtobufError(format!("unsupported wire type {w}"))),
        };
        Ok(Some((field, value)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtobufError> {
        if n > self.buf.len() {
            return Err(ProtobufError("truncated fixed-width field".into()));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn utf8(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError("string field is not UTF-8".into()))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn map_entry(b: &[u8]) -> Result<(String, &[u8]), ProtobufError> {
    let mut r = Reader { buf: b };
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Err(k)) => key = utf8(k)?,
            (2, Err(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn decode_message(b: &[u8], schema: Schema) -> Result<Map<String, Value>, ProtobufError> {
    let mut out = Map::new();
    let mut r = Reader { buf: b };
    while let Some((num, raw)) = r.next()? {
        let Some((_, name, kind)) = schema.iter().find(|(n, _, _)| *n == num) else {
            continue;
        };
        let name = (*name).to_string();
        let wrong = || ProtobufError(format!("field {name} has the wrong wire type"));
        match (*kind, raw) {
            (Field::Str, Err(s)) => {
                if !s.is_empty() {
                    out.insert(name, json!(utf8(s)?));
                }
            }
            (Field::Int, Ok(v)) => {
                if v != 0 {
                    // int32 fields: negative values arrive sign-extended to 64 bits.
                    out.insert(name, json!(v as i64));
                }
            }
            (Field::OptInt, Ok(v)) => {
                out.insert(name, json!(v as i64 as i32));
            }
            (Field::Bool, Ok(v)) => {
                if v != 0 {
                    out.insert(name, json!(true));
                }
            }
            (Field::Msg(s), Err(m)) => {
                let m = decode_message(m, s)?;
                if !m.is_empty() {
                    out.insert(name, Value::Object(m));
                }
            }
            (Field::RepeatedStr, Err(s)) => {
                let v = utf8(s)?;
                if let Value::Array(a) = out.entry(name).or_insert(json!([])) {
                    a.push(json!(v));
                }
            }
            (Field::RepeatedMsg(s), Err(m)) => {
                let m = decode_message(m, s)?;
                if let Value::Array(a) = out.entry(name).or_insert(json!([])) {
                    a.push(Value::Object(m));
                }
            }
            (Field::MapStrStr, Err(e)) => {
                let (k, v) = map_entry(e)?;
                if let Value::Object(m) = out.entry(name).or_insert(json!({})) {
                    m.insert(k, json!(utf8(v)?));
                }
            }
            (Field::MapStrBytes, Err(e)) => {
                let (k, v) = map_entry(e)?;
                if let Value::Object(m) = out.entry(name).or_insert(json!({})) {
                    m.insert(k, json!(base64(v)));
                }
            }
            (Field::IntOrString, Err(m)) => {
                let mut r = Reader { buf: m };
                let (mut ty, mut int, mut s) = (0u64, 0i64, String::new());
                while let Some((f, v)) = r.next()? {
                    match (f, v) {
                        (1, Ok(t)) => ty = t,
                        (2, Ok(i)) => int = i as i64,
                        (3, Err(b)) => s = utf8(b)?,
                        _ => {}
                    }
                }
                let v = if ty == 1 { json!(s) } else { json!(int) };
                if v != json!(0) && v != json!("") {
                    out.insert(name, v);
                }
            }
            _ => return Err(wrong()),
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ProtobufError("protobuf body lacks the k8s\\0 prefix".into()))?;
    let mut r = Reader { buf: payload };
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Err(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((f, v)) = t.next()? {
                    match (f, v) {
                        (1, Err(b)) => api_version = utf8(b)?,
                        (2, Err(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Err(b)) => raw = b,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Service") => SERVICE,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        _ => {
            return Err(ProtobufError(format!(
                "protobuf bodies are decoded only for v1 Namespace, ConfigMap, Secret, ServiceAccount and Service and apps/v1 Deployment, not {api_version} {kind}; send JSON (e.g. kubectl create -f FILE)"
            )));
        }
    };
    let mut obj = decode_message(raw, schema)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    /// Bytes `kubectl create namespace ns1` (v1.32) sends.
    const KUBECTL_NAMESPACE: &[u8] = b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1b\x0a\x13\x0a\x03ns1\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00";

    /// Bytes `kubectl create secret generic s1 --from-literal=k=v` (v1.32) sends.
    const KUBECTL_SECRET: &[u8] = b"k8s\0\x0a\x0c\x0a\x02v1\x12\x06Secret\x12\x1e\x0a\x12\x0a\x02s1\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x06\x0a\x01k\x12\x01v\x1a\x00\x1a\x00\x22\x00";

    #[test]
    fn decodes_kubectl_namespace_and_secret() {
        assert_eq!(
            decode(KUBECTL_NAMESPACE).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}})
        );
        assert_eq!(
            decode(KUBECTL_SECRET).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"k": "dg=="}})
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Deterministic xorshift stream; mutations of a valid body and pure noise.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut body = if round % 2 == 0 {
                KUBECTL_SECRET.to_vec()
            } else {
                MAGIC.to_vec()
            };
            let extra = (next() % 24) as usize;
            for _ in 0..extra {
                body.push(next() as u8);
            }
            if body.len() > 4 {
                let i = 4 + (next() as usize) % (body.len() - 4);
                body[i] = next() as u8;
            }
            let _ = decode(&body);
        }
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(b"k8s\0\x0a\x10\x0a\x07apps/v1\x12\x05Thing").is_err());
    }
}
