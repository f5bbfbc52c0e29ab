//! (owned by the policy work; being written)
