//! Node identity: an ed25519 key per node. The node id is the lowercase hex of its public key;
//! node → orchestrator/indexer requests carry a signature over their canonical encoding — the
//! protobuf encoding of the message with its `signature` field unset.

use crate::orchestrator::v1::{DeregisterNodeRequest, HeartbeatRequest, RegisterNodeRequest};
use crate::token::{hex, unhex};
use crate::types::v1::NodeSignature;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;
use std::io::Write;
use std::path::Path;

/// A node's identity key.
#[derive(Debug, Clone)]
pub struct NodeKey {
    key: SigningKey,
}

impl NodeKey {
    /// A key from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// A fresh random key.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Loads the key at `path`, creating it (mode 0600) when absent; an existing key is never
    /// overwritten. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, bool)> {
        let (seed, created) = load_or_create_seed(path)?;
        Ok((Self::from_seed(&seed), created))
    }

    /// The node id: hex of the public key.
    pub fn node_id(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// Signs bytes.
    pub fn sign(&self, bytes: &[u8]) -> NodeSignature {
        NodeSignature {
            signature: self.key.sign(bytes).to_bytes().to_vec(),
        }
    }
}

/// Loads a 32-byte secret seed kept as hex in `path`, creating it (mode 0600) when absent; an
/// existing file is never overwritten, and a damaged one is an error rather than a new key.
pub fn load_or_create_seed(path: &Path) -> std::io::Result<([u8; 32], bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] = unhex(text.trim())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    std::io::Error::other(format!("{}: not a 64-hex-digit key", path.display()))
                })?;
            Ok((seed, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(path)?;
            writeln!(f, "{}", hex(&seed))?;
            Ok((seed, true))
        }
        Err(e) => Err(e),
    }
}

/// Checks that `id` is a node id in its one canonical form: 64 lower-case hex digits (an
/// ed25519 public key). Any other spelling of the same key is refused rather than folded, so one
/// key can never stand for two nodes.
pub fn canonical_node_id(id: &str) -> Result<(), String> {
    if id.len() != 64 {
        return Err(format!(
            "{:?} is not a node id: it has {} characters, a node id has 64 lower-case hex digits",
            id.chars().take(80).collect::<String>(),
            id.chars().count()
        ));
    }
    if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{id:?} is not a node id in canonical form: use lower-case hex digits only"
        ));
    }
    Ok(())
}

/// True when `signature` over `bytes` verifies for the node whose id is `node_id_hex` (which
/// must be in canonical form, see [`canonical_node_id`]).
pub fn verify(node_id_hex: &str, bytes: &[u8], signature: &[u8]) -> bool {
    if canonical_node_id(node_id_hex).is_err() {
        return false;
    }
    let Some(key) = unhex(node_id_hex).and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(bytes, &sig).is_ok()
}

/// Signs a node report for the indexer: the signature covers the protobuf encoding of the
/// `NodeReport` (fields in tag order, defaults omitted; no maps, so the encoding is canonical).
pub fn sign_report(
    report: crate::indexer::v1::NodeReport,
    key: &NodeKey,
) -> crate::indexer::v1::SignedNodeReport {
    let signature = key.sign(&report.encode_to_vec());
    crate::indexer::v1::SignedNodeReport {
        report: Some(report),
        signature: Some(signature),
    }
}

/// What a node signs to answer an indexer's probe: a domain tag, so a probe answer can never be
/// replayed as any other signature, then the indexer's random nonce.
pub fn probe_message(nonce: &[u8]) -> Vec<u8> {
    let mut m = b"pixelgrid/probe/v1\0".to_vec();
    m.extend_from_slice(nonce);
    m
}

/// A node request that carries its own signature.
pub trait SignedRequest: Message + Clone + Sized {
    /// The signature field.
    fn signature_mut(&mut self) -> &mut Option<NodeSignature>;
    /// The node that signed it.
    fn signer_id(&self) -> Option<&str>;

    /// The bytes the signature covers.
    fn canonical(&self) -> Vec<u8> {
        let mut m = self.clone();
        *m.signature_mut() = None;
        m.encode_to_vec()
    }

    /// Signs in place.
    fn sign_with(mut self, key: &NodeKey) -> Self {
        let sig = key.sign(&self.canonical());
        *self.signature_mut() = Some(sig);
        self
    }

    /// True when signed by the node it names.
    fn verify_signature(&self) -> bool {
        let mut m = self.clone();
        let Some(sig) = m.signature_mut().take() else {
            return false;
        };
        let Some(id) = self.signer_id() else {
            return false;
        };
        verify(id, &m.encode_to_vec(), &sig.signature)
    }
}

impl SignedRequest for RegisterNodeRequest {
    fn signature_mut(&mut self) -> &mut Option<NodeSignature> {
        &mut self.signature
    }
    fn signer_id(&self) -> Option<&str> {
        self.node_id.as_ref().map(|n| n.hex.as_str())
    }
}

impl SignedRequest for HeartbeatRequest {
    fn signature_mut(&mut self) -> &mut Option<NodeSignature> {
        &mut self.signature
    }
    fn signer_id(&self) -> Option<&str> {
        self.node_id.as_ref().map(|n| n.hex.as_str())
    }
}

impl SignedRequest for DeregisterNodeRequest {
    fn signature_mut(&mut self) -> &mut Option<NodeSignature> {
        &mut self.signature
    }
    fn signer_id(&self) -> Option<&str> {
        self.node_id.as_ref().map(|n| n.hex.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::v1::NodeId;

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let key = NodeKey::from_seed(&[5; 32]);
        let req = RegisterNodeRequest {
            node_id: Some(NodeId { hex: key.node_id() }),
            whep_base_url: "http://127.0.0.1:8080/whep".into(),
            ..Default::default()
        }
        .sign_with(&key);
        assert!(req.verify_signature());
        let mut tampered = req.clone();
        tampered.whep_base_url = "http://evil.example/whep".into();
        assert!(!tampered.verify_signature());
        let mut impostor = req.clone();
        impostor.node_id = Some(NodeId {
            hex: NodeKey::from_seed(&[6; 32]).node_id(),
        });
        assert!(!impostor.verify_signature());
        let mut unsigned = req.clone();
        unsigned.signature = None;
        assert!(!unsigned.verify_signature());
        let mut shouting = req;
        shouting.node_id = Some(NodeId {
            hex: key.node_id().to_uppercase(),
        });
        assert!(
            !shouting.sign_with(&key).verify_signature(),
            "the same key spelt in upper case is not a second identity"
        );
    }

    #[test]
    fn node_ids_have_one_canonical_form() {
        let id = NodeKey::from_seed(&[9; 32]).node_id();
        assert!(canonical_node_id(&id).is_ok());
        for bad in [
            id.to_uppercase(),
            format!("{id}00"),
            id[2..].to_owned(),
            format!(" {}", &id[1..]),
        ] {
            let e = canonical_node_id(&bad).unwrap_err();
            assert!(e.contains("node id"), "{e}");
        }
    }

    #[test]
    fn a_key_file_is_created_private_and_never_replaced() {
        let dir = tempfile_dir();
        let path = dir.join("node.key");
        let (a, created) = NodeKey::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created_again) = NodeKey::load_or_create(&path).unwrap();
        assert!(!created_again);
        assert_eq!(a.node_id(), b.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            NodeKey::load_or_create(&path).is_err(),
            "a damaged key is an error, not a new identity"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).unwrap();
        let d = std::env::temp_dir().join(format!("pixelgrid-key-test-{}", hex(&seed)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
