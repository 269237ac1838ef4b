//! Stakes: what a node's operator puts at risk, and what is slashed from it. Clock-free.
//!
//! A deposit bonds at once. A withdrawal leaves the bonded stake at once but stays at risk for
//! the rules' withdrawal delay (so a node cannot withdraw just before it fails and dodge the
//! slash). Every change is an event — deposit, withdrawal request, slash — and an account is the
//! fold of its events in order, so a restarted indexer rebuilds it from the ledger exactly.

use std::collections::VecDeque;

/// One thing that happened to a stake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StakeEvent {
    /// Bonded at once.
    Deposit {
        /// Micro-credits.
        amount: u64,
    },
    /// Asked to withdraw at `at_ms`; leaves the stake `delay` later.
    Withdraw {
        /// Micro-credits.
        amount: u64,
        /// When it is free of risk (request time + the withdrawal delay), unix ms.
        free_at_ms: u64,
    },
    /// Taken at the close of the epoch ending at `epoch_end_ms`.
    Slash {
        /// Micro-credits.
        amount: u64,
        /// End of the epoch whose close slashed it, unix ms.
        epoch_end_ms: u64,
    },
}

/// One node's stake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StakeAccount {
    bonded: u64,
    /// Withdrawals in their delay: (free at, amount), oldest first.
    unbonding: VecDeque<(u64, u64)>,
}

impl StakeAccount {
    /// Applies an event. Withdrawals beyond the bonded stake are refused (`false`) and change
    /// nothing; a slash takes from the bonded stake first, then from withdrawals still at risk.
    pub fn apply(&mut self, event: StakeEvent) -> bool {
        match event {
            StakeEvent::Deposit { amount } => {
                self.bonded = self.bonded.saturating_add(amount);
                true
            }
            StakeEvent::Withdraw { amount, free_at_ms } => {
                if amount > self.bonded {
                    return false;
                }
                self.bonded -= amount;
                self.unbonding.push_back((free_at_ms, amount));
                true
            }
            StakeEvent::Slash {
                amount,
                epoch_end_ms,
            } => {
                let from_bonded = amount.min(self.bonded);
                self.bonded -= from_bonded;
                let mut left = amount - from_bonded;
                for (free_at, held) in self.unbonding.iter_mut() {
                    if left == 0 {
                        break;
                    }
                    if *free_at > epoch_end_ms {
                        let take = left.min(*held);
                        *held -= take;
                        left -= take;
                    }
                }
                self.unbonding.retain(|(_, held)| *held > 0);
                true
            }
        }
    }

    /// Bonded stake.
    pub fn bonded(&self) -> u64 {
        self.bonded
    }

    /// Withdrawals still in their delay at `at_ms`.
    pub fn unbonding_at(&self, at_ms: u64) -> u64 {
        self.unbonding
            .iter()
            .filter(|(free_at, _)| *free_at > at_ms)
            .map(|(_, a)| *a)
            .fold(0u64, u64::saturating_add)
    }

    /// What can be slashed at `at_ms`: the bonded stake and withdrawals still in their delay.
    pub fn at_risk(&self, at_ms: u64) -> u64 {
        self.bonded.saturating_add(self.unbonding_at(at_ms))
    }
}

/// Aethir's published shape for a downtime slash, `1/3 × K × stake coefficient` of the stake
/// at risk, with K and the coefficient in parts per million; dishonesty costs `dishonesty_factor`
/// times that ([`dishonesty_slash`]).
pub fn downtime_slash(at_risk: u64, k_ppm: u64, coefficient_ppm: u64) -> u64 {
    dishonesty_slash(at_risk, k_ppm, coefficient_ppm, 1)
}

/// The slash for failed or dishonest checks: `factor` times the downtime slash (Aethir: 3×),
/// never more than the stake at risk.
pub fn dishonesty_slash(at_risk: u64, k_ppm: u64, coefficient_ppm: u64, factor: u64) -> u64 {
    (u128::from(at_risk)
        .saturating_mul(u128::from(k_ppm))
        .saturating_mul(u128::from(coefficient_ppm))
        .saturating_mul(u128::from(factor))
        / 3
        / 1_000_000_000_000)
        .min(u128::from(at_risk)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_stays_slashable_through_its_delay() {
        let mut a = StakeAccount::default();
        assert!(a.apply(StakeEvent::Deposit { amount: 1_000 }));
        assert!(!a.apply(StakeEvent::Withdraw {
            amount: 5_000,
            free_at_ms: 10
        }));
        assert!(a.apply(StakeEvent::Withdraw {
            amount: 600,
            free_at_ms: 100
        }));
        assert_eq!(
            (a.bonded(), a.at_risk(50), a.at_risk(100)),
            (400, 1_000, 400)
        );
        // Slashed at 50: 700 takes the 400 bonded and 300 of the withdrawal still at risk.
        a.apply(StakeEvent::Slash {
            amount: 700,
            epoch_end_ms: 50,
        });
        assert_eq!(
            (a.bonded(), a.at_risk(50), a.unbonding_at(50)),
            (0, 300, 300)
        );
        // After its delay the rest is out of reach.
        a.apply(StakeEvent::Slash {
            amount: 700,
            epoch_end_ms: 100,
        });
        assert_eq!(
            a.unbonding_at(50),
            300,
            "a free withdrawal is never slashed"
        );
    }

    #[test]
    fn the_downtime_slash_has_aethirs_shape() {
        // K = 30 %, coefficient 1: a tenth of the stake.
        assert_eq!(downtime_slash(1_000_000, 300_000, 1_000_000), 100_000);
        assert_eq!(downtime_slash(1_000_000, 0, 1_000_000), 0);
        assert_eq!(
            downtime_slash(u64::MAX, u64::MAX, u64::MAX),
            u64::MAX,
            "never more than the stake, never an overflow"
        );
    }
}
