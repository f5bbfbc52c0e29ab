//! (owned by the front-doors work; being written)
