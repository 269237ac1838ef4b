//! Signed node reports. A node signs, with its identity key, the protobuf encoding of its
//! `NodeReport` (node id, strictly increasing sequence, time, state, sessions delivered, telemetry
//! digest); the signature travels beside it in `SignedNodeReport`. Protobuf encoding of a message
//! without maps is canonical for our purposes: fields in tag order, defaults omitted.

use pixelgrid_proto::identity::{NodeKey, verify};
use pixelgrid_proto::indexer::v1::{NodeReport, SignedNodeReport};
use prost::Message;

/// Signs a report.
pub fn sign(report: NodeReport, key: &NodeKey) -> SignedNodeReport {
    let signature = key.sign(&report.encode_to_vec());
    SignedNodeReport {
        report: Some(report),
        signature: Some(signature),
    }
}

/// True when the report is signed by the node it names.
pub fn signature_valid(signed: &SignedNodeReport) -> bool {
    let (Some(report), Some(sig)) = (&signed.report, &signed.signature) else {
        return false;
    };
    let Some(node) = &report.node_id else {
        return false;
    };
    verify(&node.hex, &report.encode_to_vec(), &sig.signature)
}
