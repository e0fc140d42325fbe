//! The CNI<->agent protocol: one JSON request and one JSON reply per
//! connection, each framed by a 4-byte big-endian length.
//!
//! ```text
//! binary -> agent   [len: u32 BE][{"protocolVersion":1,"verb":"ADD","env":{..},"config":{..},"stdin":".."}]
//! agent  -> binary  [len: u32 BE][{"protocolVersion":1,"result":{..}}]      ADD success
//!                   [len: u32 BE][{"protocolVersion":1}]                    other verbs' success
//!                   [len: u32 BE][{"protocolVersion":1,"error":{"code":..,"msg":..,"details":..}}]
//! ```
//!
//! Both sides check `protocolVersion` before anything else; a mismatch is
//! error 106 ([`ErrorCode::ProtocolMismatch`]) on both sides.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::config::NetworkConfig;
use crate::env::{CniEnv, Command};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;

/// The protocol version this crate speaks. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts (requests carry stdin, which is small).
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// Largest network configuration (stdin) the binary forwards: a request
/// carries it raw and parsed, JSON-escaped, within one [`MAX_FRAME_LEN`]
/// frame.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// The verbs the agent answers (VERSION is answered by the binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verb {
    /// ADD: create the pod's interface; reply carries a result.
    Add,
    /// DEL: remove it; must succeed if already gone.
    Del,
    /// CHECK: verify it against `config.prev_result`.
    Check,
    /// STATUS: ready for ADD? Errors 50/51 when not.
    Status,
    /// GC: remove what is not in `config.valid_attachments`.
    Gc,
}

impl Verb {
    /// The verb for a CNI command, `None` for VERSION.
    pub fn from_command(c: Command) -> Option<Verb> {
        Some(match c {
            Command::Add => Verb::Add,
            Command::Del => Verb::Del,
            Command::Check => Verb::Check,
            Command::Status => Verb::Status,
            Command::Gc => Verb::Gc,
            Command::Version => return None,
        })
    }
}

/// A request from the `switchyard` binary to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRequest {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u32,
    /// What to do.
    pub verb: Verb,
    /// The validated `CNI_*` environment.
    pub env: CniEnv,
    /// The parsed network configuration (`prev_result` in the 1.1.0 shape).
    pub config: NetworkConfig,
    /// Stdin exactly as the runtime passed it.
    pub stdin: String,
}

impl CniRequest {
    /// A request of this crate's protocol version.
    pub fn new(verb: Verb, env: CniEnv, config: NetworkConfig, stdin: String) -> Self {
        CniRequest {
            protocol_version: PROTOCOL_VERSION,
            verb,
            env,
            config,
            stdin,
        }
    }

    /// Checks the identifiers the agent keys its state on, the same way the
    /// binary checks its environment (error 4): the container id and
    /// interface name, and GC's valid attachments. The agent runs this on
    /// every request it receives, so nothing but the real binary's
    /// validation can put, say, a `/` into an id it records.
    pub fn validate_identifiers(&self) -> Result<(), CniError> {
        if let Some(id) = &self.env.container_id {
            crate::env::validate_container_id(id)?;
        }
        if let Some(ifname) = &self.env.ifname {
            crate::env::validate_ifname(ifname)?;
        }
        for a in self.config.valid_attachments.iter().flatten() {
            crate::env::validate_container_id(&a.container_id)?;
            crate::env::validate_ifname(&a.ifname)?;
        }
        Ok(())
    }

    /// `(container id, ifname)` of an ADD/DEL/CHECK request.
    pub fn attachment(&self) -> Option<(&str, &str)> {
        Some((
            self.env.container_id.as_deref()?,
            self.env.ifname.as_deref()?,
        ))
    }
}

/// The agent's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniReply {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
    /// ADD's result (only what the agent created; the binary appends it to any `prevResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CniResult>,
    /// The failure, if the verb failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CniError>,
}

impl CniReply {
    /// Success, with a result for ADD or `None` for the other verbs.
    pub fn success(result: Option<CniResult>) -> Self {
        CniReply {
            protocol_version: PROTOCOL_VERSION,
            result,
            error: None,
        }
    }

    /// Failure.
    pub fn failure(error: CniError) -> Self {
        CniReply {
            protocol_version: PROTOCOL_VERSION,
            result: None,
            error: Some(error),
        }
    }

    /// The outcome: `Err` if `error` is set, else the optional result.
    pub fn into_outcome(self) -> Result<Option<CniResult>, CniError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.result),
        }
    }
}

/// Error of the framing layer (I/O, or a frame over [`MAX_FRAME_LEN`]).
#[derive(Debug, thiserror::Error)]
#[error("CNI protocol framing: {0}")]
pub struct FrameError(#[from] pub std::io::Error);

fn mismatch(theirs: Option<u64>, side: &str) -> CniError {
    let theirs = theirs.map_or_else(|| "none".to_owned(), |v| v.to_string());
    CniError::new(
        ErrorCode::ProtocolMismatch,
        "switchyard binary and agent protocol versions differ",
        format!(
            "this {side} speaks protocol {PROTOCOL_VERSION}, the peer speaks {theirs}; install the switchyard CNI binary shipped with the running switchyard-agent (the agent's DaemonSet copies it to the CNI bin dir)"
        ),
    )
}

/// Checks `protocolVersion`, then decodes the whole frame.
fn decode_frame<T: serde::de::DeserializeOwned>(
    frame: &[u8],
    side: &str,
    decode_error: ErrorCode,
) -> Result<T, CniError> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<u64>,
    }
    let envelope: Envelope = serde_json::from_slice(frame).map_err(|e| {
        CniError::new(
            decode_error,
            "undecodable protocol frame",
            format!("{side} received: {e}"),
        )
    })?;
    if envelope.protocol_version != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(mismatch(envelope.protocol_version, side));
    }
    serde_json::from_slice(frame).map_err(|e| {
        CniError::new(
            decode_error,
            "undecodable protocol frame",
            format!("{side} received: {e}"),
        )
    })
}

fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

fn encode_json<T: Serialize>(
    inner: &mut LengthDelimitedCodec,
    item: &T,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let json = serde_json::to_vec(item).map_err(std::io::Error::other)?;
    inner.encode(Bytes::from(json), dst)?;
    Ok(())
}

/// The agent's codec: decodes requests, encodes replies.
///
/// A frame that is not a valid request of this protocol version decodes to
/// `Err(CniError)` (106 on version mismatch, 6 otherwise) so the server can
/// answer it instead of dropping the connection.
#[derive(Debug)]
pub struct CniServerCodec {
    inner: LengthDelimitedCodec,
}

impl Default for CniServerCodec {
    fn default() -> Self {
        CniServerCodec {
            inner: length_codec(),
        }
    }
}

impl Decoder for CniServerCodec {
    type Item = Result<CniRequest, CniError>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        Ok(self
            .inner
            .decode(src)?
            .map(|frame| decode_frame(&frame, "agent", ErrorCode::DecodingFailure)))
    }
}

impl Encoder<CniReply> for CniServerCodec {
    type Error = FrameError;

    fn encode(&mut self, item: CniReply, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_json(&mut self.inner, &item, dst)
    }
}

/// The binary's codec: encodes requests, decodes replies (`Err` with 106 on a
/// version mismatch, 107 on anything else undecodable).
#[derive(Debug)]
pub struct CniClientCodec {
    inner: LengthDelimitedCodec,
}

impl Default for CniClientCodec {
    fn default() -> Self {
        CniClientCodec {
            inner: length_codec(),
        }
    }
}

impl Decoder for CniClientCodec {
    type Item = Result<CniReply, CniError>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        Ok(self
            .inner
            .decode(src)?
            .map(|frame| decode_frame(&frame, "switchyard binary", ErrorCode::InvalidAgentReply)))
    }
}

impl Encoder<&CniRequest> for CniClientCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &CniRequest, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_json(&mut self.inner, item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::env::CniArgs;

    fn request() -> CniRequest {
        let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"switchyard"}"#;
        CniRequest::new(
            Verb::Del,
            CniEnv {
                container_id: Some("c1".into()),
                netns: None,
                ifname: Some("eth0".into()),
                args: CniArgs::default(),
                path: vec![],
            },
            parse_config(stdin.as_bytes()).unwrap(),
            stdin.into(),
        )
    }

    #[test]
    fn reply_frames_are_byte_exact() {
        let mut codec = CniServerCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(CniReply::success(None), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x00\x00\x00\x15{\"protocolVersion\":1}");
        buf.clear();
        codec
            .encode(
                CniReply::failure(CniError::new(ErrorCode::IpPoolExhausted, "pool full", "")),
                &mut buf,
            )
            .unwrap();
        let json = br#"{"protocolVersion":1,"error":{"code":101,"msg":"pool full","details":""}}"#;
        assert_eq!(&buf[..4], (json.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..], json);
        let mut client = CniClientCodec::default();
        let back = client.decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(back.into_outcome().unwrap_err().code, 101);
    }

    #[test]
    fn request_frame_is_byte_exact_and_round_trips() {
        let mut buf = BytesMut::new();
        CniClientCodec::default()
            .encode(&request(), &mut buf)
            .unwrap();
        let json = concat!(
            r#"{"protocolVersion":1,"verb":"DEL","env":{"containerId":"c1","netns":null,"ifname":"eth0","#,
            r#""args":{"ignoreUnknown":false,"k8sPodNamespace":null,"k8sPodName":null,"k8sPodUid":null,"k8sPodInfraContainerId":null,"other":{}},"path":[]},"#,
            r#""config":{"cniVersion":"1.1.0","name":"n","type":"switchyard","agentSocket":"/var/run/switchyard/cni.sock","timeoutSeconds":90,"#,
            r#""logFile":null,"logLevel":"warn","mtu":null,"dns":null,"capabilities":{},"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}},"#,
            r#""args":null,"prevResult":null,"validAttachments":null},"#,
            r#""stdin":"{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"type\":\"switchyard\"}"}"#
        );
        assert_eq!(std::str::from_utf8(&buf[4..]).unwrap(), json);
        assert_eq!(&buf[..4], (json.len() as u32).to_be_bytes());
        let back = CniServerCodec::default()
            .decode(&mut buf)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn version_mismatch_and_garbage() {
        let mut server = CniServerCodec::default();
        let mut buf = BytesMut::new();
        length_codec()
            .encode(
                Bytes::from_static(br#"{"protocolVersion":2,"verb":"ADD"}"#),
                &mut buf,
            )
            .unwrap();
        let e = server.decode(&mut buf).unwrap().unwrap().unwrap_err();
        assert_eq!(e.code, 106);
        assert!(e.details.contains("peer speaks 2"), "{e}");
        length_codec()
            .encode(Bytes::from_static(b"not json"), &mut buf)
            .unwrap();
        assert_eq!(
            server.decode(&mut buf).unwrap().unwrap().unwrap_err().code,
            6
        );
        let mut client = CniClientCodec::default();
        length_codec()
            .encode(Bytes::from_static(br#"{"result":{}}"#), &mut buf)
            .unwrap();
        assert_eq!(
            client.decode(&mut buf).unwrap().unwrap().unwrap_err().code,
            106
        );
        length_codec()
            .encode(
                Bytes::from_static(br#"{"protocolVersion":1,"result":5}"#),
                &mut buf,
            )
            .unwrap();
        assert_eq!(
            client.decode(&mut buf).unwrap().unwrap().unwrap_err().code,
            107
        );
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        assert!(CniServerCodec::default().decode(&mut buf).is_err());
    }
}
