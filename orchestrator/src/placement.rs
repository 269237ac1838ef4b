//! Where a session goes: the placement policy, with no clock and no I/O.
//!
//! Inputs are the candidate nodes as the registry sees them, the player's request (game, region,
//! measured round trips, limits) and the [`Policy`]; the output is a [`Placement`]: qualifying
//! nodes best first, and a reason for every node left out. Only nodes that are ready, have the
//! game and a free slot, and ask no more than the player's price limit qualify. Among them:
//!
//! 1. **latency** — nodes over the latency cap are left out. The cap starts at the policy's
//!    first step and relaxes as the player keeps waiting (`waited_ms`), like GameLift's player
//!    latency policies; a player's own `max_latency_ms` can only tighten it. Round trips are
//!    compared in [`Policy::latency_bucket_ms`] buckets so a millisecond does not beat an idle node;
//! 2. **load** — [`Packing::Spread`] puts the session on the least-loaded node,
//!    [`Packing::Pack`] on the fullest one that still has room;
//! 3. **price** — cheapest first; then node id, so the same inputs always give the same answer.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Taking new sessions?
    pub ready: bool,
    /// Region code.
    pub region: String,
    /// Games installed.
    pub games: Vec<String>,
    /// Version and modes of each installed game, by id (absent in records from nodes that did
    /// not say: any version, any mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offers: BTreeMap<String, GameOffer>,
    /// Sessions it can hold.
    pub capacity: u32,
    /// Sessions it holds now (reserved or active).
    pub used: u32,
    /// Micro-credits per session-minute.
    pub price: u64,
}

/// One installed game's version and modes on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameOffer {
    /// The installed version.
    pub version: String,
    /// Shown to players.
    #[serde(default)]
    pub name: String,
    /// Modes it plays in (`WIDTHxHEIGHT@FPS`); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<String>,
}

impl NodeView {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }

    /// True when the node has `game`, at `version` when one is asked for.
    pub fn has_game(&self, game: &str, version: Option<&str>) -> bool {
        self.games.iter().any(|g| g == game)
            && match (version, self.offers.get(game)) {
                (None, _) => true,
                (Some(v), Some(offer)) => offer.version == v,
                (Some(_), None) => false,
            }
    }

    fn plays_in(&self, game: &str, mode: &str) -> bool {
        self.offers
            .get(game)
            .is_none_or(|o| o.modes.is_empty() || o.modes.iter().any(|m| m == mode))
    }
}

/// Spread sessions over nodes, or pack them onto few.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Packing {
    /// Least-loaded node first: best for players.
    Spread,
    /// Fullest node with room first: frees whole machines.
    Pack,
}

/// The operator's placement policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `(waited_ms, cap_ms)` steps, ascending by `waited_ms`: after waiting `waited_ms` the cap is
    /// `cap_ms`. The first step should have `waited_ms = 0`.
    pub latency_caps: Vec<(u64, u32)>,
    /// Width of latency buckets compared as equal, ms.
    pub latency_bucket_ms: u32,
    /// Spread or pack.
    pub packing: Packing,
    /// Candidates offered in the first launch step.
    pub max_candidates: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            latency_caps: vec![(0, 50), (5_000, 80), (10_000, 150)],
            latency_bucket_ms: 5,
            packing: Packing::Spread,
            max_candidates: 5,
        }
    }
}

impl Policy {
    /// The cap in force after waiting `waited_ms`.
    pub fn cap_after(&self, waited_ms: u64) -> Option<u32> {
        self.latency_caps
            .iter()
            .take_while(|(after, _)| *after <= waited_ms)
            .last()
            .map(|(_, cap)| *cap)
    }
}

/// What the player asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Game id.
    pub game: String,
    /// Game version; `None` takes whatever version a node has.
    pub version: Option<String>,
    /// The mode asked for (`WIDTHxHEIGHT@FPS`); `None` matches any.
    pub mode: Option<String>,
    /// Player's region (candidates in it come first).
    pub region: String,
    /// Measured round trip to each node, ms. Empty in the candidate step.
    pub rtt_ms: BTreeMap<String, u32>,
    /// The player's own latency limit.
    pub max_latency_ms: Option<u32>,
    /// The player's price limit.
    pub max_price: Option<u64>,
    /// How long the player has been waiting for a node, ms (relaxes the cap).
    pub waited_ms: u64,
    /// Only this node may be a candidate (a checker's launch); `None`: any.
    pub only_node: Option<String>,
}

/// Why a node was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// Draining or otherwise not taking sessions.
    NotReady,
    /// The game (at the version asked for) is not installed.
    NoGame,
    /// The game is installed but does not play in the mode asked for.
    ModeNotOffered,
    /// Every slot is taken.
    Full,
    /// Asks more than the player's limit.
    TooExpensive {
        /// Node's price.
        price: u64,
        /// Player's limit.
        max: u64,
    },
    /// No round trip was measured to it.
    NotMeasured,
    /// Round trip over the cap.
    TooFar {
        /// Measured.
        rtt_ms: u32,
        /// Cap in force.
        cap_ms: u32,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotReady => write!(f, "not taking sessions (draining)"),
            Rejection::NoGame => write!(f, "game (at that version) not installed"),
            Rejection::ModeNotOffered => write!(f, "game not offered in that mode"),
            Rejection::Full => write!(f, "no free slot"),
            Rejection::TooExpensive { price, max } => {
                write!(f, "price {price} over the limit {max}")
            }
            Rejection::NotMeasured => write!(f, "no round trip measured"),
            Rejection::TooFar { rtt_ms, cap_ms } => {
                write!(f, "round trip {rtt_ms} ms over the cap {cap_ms} ms")
            }
        }
    }
}

/// The outcome: nodes best first, and the others with their reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Qualifying node ids, best first.
    pub ranked: Vec<String>,
    /// Node ids left out, with why.
    pub rejected: Vec<(String, Rejection)>,
}

impl Placement {
    /// The most common reason nodes were left out, for an error message.
    pub fn summary(&self) -> String {
        if self.rejected.is_empty() {
            return "no nodes are registered".into();
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, r) in &self.rejected {
            let key = match r {
                Rejection::TooExpensive { .. } => "over the price limit".to_owned(),
                Rejection::TooFar { cap_ms, .. } => format!("over the {cap_ms} ms latency cap"),
                other => other.to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(k, n)| format!("{n} node(s) {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn basic_rejection(n: &NodeView, req: &Request) -> Option<Rejection> {
    if !n.ready {
        Some(Rejection::NotReady)
    } else if !n.has_game(&req.game, req.version.as_deref()) {
        Some(Rejection::NoGame)
    } else if req
        .mode
        .as_deref()
        .is_some_and(|m| !n.plays_in(&req.game, m))
    {
        Some(Rejection::ModeNotOffered)
    } else if n.free() == 0 {
        Some(Rejection::Full)
    } else {
        match req.max_price {
            Some(max) if n.price > max => Some(Rejection::TooExpensive {
                price: n.price,
                max,
            }),
            _ => None,
        }
    }
}

fn load_key(n: &NodeView, packing: Packing) -> (u64, u64) {
    // Compare used/capacity as a fraction without floats: used * other_capacity.
    let frac = (u64::from(n.used) << 32) / u64::from(n.capacity.max(1));
    match packing {
        Packing::Spread => (frac, 0),
        Packing::Pack => (u64::MAX - frac, 0),
    }
}

/// First launch step: up to `policy.max_candidates` qualifying nodes for the player to measure,
/// those in the player's region first, then by load and price.
pub fn candidates<'a>(
    nodes: impl IntoIterator<Item = &'a NodeView>,
    req: &Request,
    policy: &Policy,
) -> Placement {
    let mut out = Placement::default();
    let mut ok: Vec<&NodeView> = Vec::new();
    for n in nodes
        .into_iter()
        .filter(|n| req.only_node.as_ref().is_none_or(|only| *only == n.id))
    {
        match basic_rejection(n, req) {
            Some(r) => out.rejected.push((n.id.clone(), r)),
            None => ok.push(n),
        }
    }
    // Only the best K are wanted: select them, then sort those (a grid has thousands of nodes).
    let key = |n: &&'a NodeView| {
        (
            n.region != req.region,
            load_key(n, Packing::Spread),
            n.price,
            n.id.as_str(),
        )
    };
    let k = policy.max_candidates;
    if k == 0 {
        ok.clear();
    } else if ok.len() > k {
        ok.select_nth_unstable_by(k - 1, |a, b| key(a).cmp(&key(b)));
        ok.truncate(k);
    }
    ok.sort_by(|a, b| key(a).cmp(&key(b)));
    out.ranked = ok.into_iter().map(|n| n.id.clone()).collect();
    out
}

/// Second launch step: rank nodes with the player's measured round trips.
pub fn place(nodes: &[NodeView], req: &Request, policy: &Policy) -> Placement {
    let cap = match (policy.cap_after(req.waited_ms), req.max_latency_ms) {
        (Some(p), Some(m)) => Some(p.min(m)),
        (p, m) => p.or(m),
    };
    let bucket = policy.latency_bucket_ms.max(1);
    let mut out = Placement::default();
    let mut ok: Vec<(u32, &NodeView)> = Vec::new();
    for n in nodes {
        if let Some(r) = basic_rejection(n, req) {
            out.rejected.push((n.id.clone(), r));
            continue;
        }
        let Some(&rtt) = req.rtt_ms.get(&n.id) else {
            out.rejected.push((n.id.clone(), Rejection::NotMeasured));
            continue;
        };
        match cap {
            Some(cap_ms) if rtt > cap_ms => out.rejected.push((
                n.id.clone(),
                Rejection::TooFar {
                    rtt_ms: rtt,
                    cap_ms,
                },
            )),
            _ => ok.push((rtt, n)),
        }
    }
    ok.sort_by_key(|(rtt, n)| {
        (
            rtt / bucket,
            load_key(n, policy.packing),
            n.price,
            *rtt,
            n.id.clone(),
        )
    });
    out.ranked = ok.into_iter().map(|(_, n)| n.id.clone()).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, used: u32, capacity: u32) -> NodeView {
        NodeView {
            id: id.into(),
            ready: true,
            region: "eu-west".into(),
            games: vec!["arena".into()],
            offers: BTreeMap::new(),
            capacity,
            used,
            price: 100,
        }
    }

    fn req(rtts: &[(&str, u32)]) -> Request {
        Request {
            game: "arena".into(),
            region: "eu-west".into(),
            rtt_ms: rtts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..Request::default()
        }
    }

    #[test]
    fn nearest_node_wins_then_least_loaded_among_equals() {
        let nodes = [node("a", 0, 4), node("b", 0, 4), node("c", 3, 4)];
        let p = place(
            &nodes,
            &req(&[("a", 30), ("b", 10), ("c", 11)]),
            &Policy::default(),
        );
        // b and c share the 10–14 ms bucket; b is emptier.
        assert_eq!(p.ranked, ["b", "c", "a"]);
    }

    #[test]
    fn pack_prefers_the_fullest_node_with_room() {
        let nodes = [node("a", 1, 4), node("b", 3, 4), node("c", 4, 4)];
        let policy = Policy {
            packing: Packing::Pack,
            ..Policy::default()
        };
        let p = place(&nodes, &req(&[("a", 10), ("b", 10), ("c", 10)]), &policy);
        assert_eq!(p.ranked, ["b", "a"]);
        assert_eq!(p.rejected, [("c".to_owned(), Rejection::Full)]);
    }

    #[test]
    fn every_left_out_node_has_its_reason() {
        let mut draining = node("d", 0, 4);
        draining.ready = false;
        let mut pricey = node("p", 0, 4);
        pricey.price = 999;
        let mut versioned = node("v", 0, 4);
        versioned.offers.insert(
            "arena".into(),
            GameOffer {
                version: "2.0".into(),
                name: "Arena".into(),
                modes: vec!["640x480@30".into()],
            },
        );
        let ask = |version: Option<&str>, mode: Option<&str>| {
            let r = Request {
                game: "arena".into(),
                version: version.map(str::to_owned),
                mode: mode.map(str::to_owned),
                ..Request::default()
            };
            basic_rejection(&versioned, &r)
        };
        assert_eq!(ask(None, None), None);
        assert_eq!(ask(Some("2.0"), Some("640x480@30")), None);
        assert_eq!(ask(Some("1.0"), None), Some(Rejection::NoGame));
        assert_eq!(
            ask(None, Some("1280x720@60")),
            Some(Rejection::ModeNotOffered)
        );
        let mut other_game = node("g", 0, 4);
        other_game.games = vec!["tetris".into()];
        let nodes = [
            draining,
            pricey,
            other_game,
            node("far", 0, 4),
            node("unmeasured", 0, 4),
            node("full", 2, 2),
        ];
        let mut r = req(&[("far", 400), ("p", 5)]);
        r.max_price = Some(500);
        let p = place(&nodes, &r, &Policy::default());
        assert!(p.ranked.is_empty());
        let reasons: BTreeMap<_, _> = p.rejected.iter().cloned().collect();
        assert_eq!(reasons["d"], Rejection::NotReady);
        assert_eq!(
            reasons["p"],
            Rejection::TooExpensive {
                price: 999,
                max: 500
            }
        );
        assert_eq!(reasons["g"], Rejection::NoGame);
        assert_eq!(
            reasons["far"],
            Rejection::TooFar {
                rtt_ms: 400,
                cap_ms: 50
            }
        );
        assert_eq!(reasons["unmeasured"], Rejection::NotMeasured);
        assert_eq!(reasons["full"], Rejection::Full);
        assert!(
            p.summary().contains("over the 50 ms latency cap"),
            "{}",
            p.summary()
        );
    }

    #[test]
    fn the_cap_relaxes_as_the_player_waits_and_the_players_own_limit_tightens_it() {
        let nodes = [node("x", 0, 4)];
        let mut r = req(&[("x", 70)]);
        assert!(place(&nodes, &r, &Policy::default()).ranked.is_empty());
        r.waited_ms = 6_000;
        assert_eq!(place(&nodes, &r, &Policy::default()).ranked, ["x"]);
        r.max_latency_ms = Some(60);
        assert!(place(&nodes, &r, &Policy::default()).ranked.is_empty());
    }

    #[test]
    fn candidates_prefer_the_players_region_and_stop_at_k() {
        let mut far = node("us", 0, 4);
        far.region = "us-east".into();
        let nodes: Vec<_> = std::iter::once(far)
            .chain((0..9).map(|i| node(&format!("eu{i}"), i % 4, 4)))
            .collect();
        let c = candidates(&nodes, &req(&[]), &Policy::default());
        assert_eq!(c.ranked.len(), 5);
        assert!(!c.ranked.contains(&"us".to_owned()));
        assert!(
            c.ranked[0] == "eu0" || c.ranked[0] == "eu4" || c.ranked[0] == "eu8",
            "{:?}",
            c.ranked
        );
    }

    /// Property test over many generated grids: never a full node, never a node over the cap
    /// while one under it has room, and the same inputs always give the same answer.
    #[test]
    fn placement_properties_hold_on_generated_grids() {
        let mut rng = 0x1234_5678_9abc_def1_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        for _ in 0..2_000 {
            let count = 1 + next(12) as usize;
            let nodes: Vec<NodeView> = (0..count)
                .map(|i| {
                    let capacity = next(5) as u32;
                    NodeView {
                        id: format!("n{i}"),
                        ready: next(10) > 0,
                        region: if next(2) == 0 { "eu-west" } else { "us-east" }.into(),
                        games: if next(8) > 0 {
                            vec!["arena".into()]
                        } else {
                            vec![]
                        },
                        offers: BTreeMap::new(),
                        capacity,
                        used: next(u64::from(capacity) + 2) as u32,
                        price: next(300),
                    }
                })
                .collect();
            let mut r = req(&[]);
            for n in &nodes {
                if next(6) > 0 {
                    r.rtt_ms.insert(n.id.clone(), next(200) as u32);
                }
            }
            r.waited_ms = next(15_000);
            r.max_price = (next(3) == 0).then(|| next(300));
            let policy = Policy {
                packing: if next(2) == 0 {
                    Packing::Spread
                } else {
                    Packing::Pack
                },
                ..Policy::default()
            };
            let p = place(&nodes, &r, &policy);
            assert_eq!(p, place(&nodes, &r, &policy), "deterministic");
            assert_eq!(
                p.ranked.len() + p.rejected.len(),
                nodes.len(),
                "every node accounted for"
            );
            let cap = policy.cap_after(r.waited_ms).unwrap();
            for id in &p.ranked {
                let n = nodes.iter().find(|n| &n.id == id).unwrap();
                assert!(n.used < n.capacity, "full node {n:?} ranked");
                assert!(r.rtt_ms[id] <= cap, "node over the cap ranked: {n:?}");
            }
            if let Some(best) = p.ranked.first() {
                let best_rtt = r.rtt_ms[best];
                assert!(best_rtt <= cap);
            }
        }
    }
}
